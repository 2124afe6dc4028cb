//! `hookrelay-control`: reads its settings ([`hookrelay_control::config`]), sets up logging, checks the listener's
//! files, opens the store, binds the listener and hands over to [`hookrelay_control::serve`].

use std::io::Write as _;

use anyhow::Context as _;
use hookrelay_control::config::Args;
use hookrelay_control::listener::Security;

// Control's store rewrites sled pages on every ingested report, a load under which glibc's malloc spends much of
// control's CPU; jemalloc does not.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena, freed pages returned after a second: see `hookrelay_common::allocator`.
hookrelay_common::export_jemalloc_options!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::load();
    let (listen, log_format, print_config) = (args.listen, args.log_format, args.print_config);
    let config = args.into_config()?;
    hookrelay_control::ops::init_logging(log_format);

    if print_config {
        let printed = hookrelay_control::ops::effective_config(&config, listen, log_format);
        println!("{}", serde_json::to_string_pretty(&printed)?);
        return Ok(());
    }
    // Before anything is opened or bound: unusable TLS or token files, or plaintext on a public address, stop
    // control here with a clear error.
    Security::load(config.tls.clone(), config.tokens_file.clone(), listen)?;
    // Before the listening line: a wrong master key, an unusable data directory or an unreachable database stops
    // control first.
    let store = hookrelay_control::open_store(&config).await?;

    // Signal handlers are installed before the listening line, so a signal sent right after it is handled.
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("cannot read the listening address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "hookrelay-control listening on {local_addr}")?;
    stdout.flush()?;
    drop(stdout);
    match &config.database {
        Some(database) => tracing::info!(%local_addr, database = %database.redacted_url(), "hookrelay-control started"),
        None => tracing::info!(%local_addr, data_dir = %config.data_dir.display(), "hookrelay-control started"),
    }
    hookrelay_control::serve(config, store, listener, shutdown).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    })
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn jemalloc_runs_with_the_exported_options() {
        hookrelay_tests::allocator::assert_jemalloc_options_in_force();
    }
}
