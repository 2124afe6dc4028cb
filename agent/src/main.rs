//! `hookrelay-agent`: reads its settings ([`hookrelay_agent::config`]), sets up logging, binds the listener and
//! runs the agent.

use std::io::Write as _;

use anyhow::Context as _;
use hookrelay_agent::config::Args;

// sled allocates a 512 KiB buffer per log segment. Under glibc's malloc these fragment the heap, so the agent's
// resident memory keeps growing with the queue; jemalloc returns such memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena, freed pages returned after a second: see `hookrelay_common::allocator`.
hookrelay_common::export_jemalloc_options!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::load();
    hookrelay_agent::ops::init_logging(args.log_format);
    let (listen, log_format, print_config) = (args.listen, args.log_format, args.print_config);
    let config = args.into_config()?;
    if print_config {
        let printed = hookrelay_agent::ops::effective_config(&config, listen, log_format);
        println!("{}", serde_json::to_string_pretty(&printed)?);
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    // The line comes once the queue and the cached config are open: probes and scripts wait for it.
    let ready = |address| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "hookrelay-agent listening on {address}");
        let _ = stdout.flush();
    };
    hookrelay_agent::run_reporting_ready(config, listener, shutdown_signal(), ready).await
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn jemalloc_runs_with_the_exported_options() {
        hookrelay_tests::allocator::assert_jemalloc_options_in_force();
    }
}
