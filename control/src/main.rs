//! `hookrelay-control`: parses flags, sets up logging, binds the listener and hands over to
//! [`hookrelay_control::run`].

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use hookrelay_control::{
    Config, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_MAX_ENDPOINTS_PER_OWNER, ENV_ALLOW_INSECURE_ENDPOINTS,
    ENV_DATA_DIR, ENV_LISTEN, ENV_MAX_ENDPOINTS_PER_OWNER,
};
use tracing_subscriber::EnvFilter;

/// hookrelay's control plane: owners, event types and endpoints, the config stream to agents, delivery logs.
#[derive(Debug, Parser)]
#[command(name = "hookrelay-control", version)]
struct Args {
    /// Address to serve gRPC (AdminService and AgentService) on; port 0 picks a free port.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,

    /// Directory of control's database.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR, value_name = "PATH")]
    data_dir: PathBuf,

    /// Permit http:// endpoints that are created with the insecure flag.
    #[arg(long, env = ENV_ALLOW_INSECURE_ENDPOINTS, value_parser = clap::builder::BoolishValueParser::new())]
    allow_insecure_endpoints: bool,

    /// Most endpoints one owner may have.
    #[arg(
        long,
        env = ENV_MAX_ENDPOINTS_PER_OWNER,
        default_value_t = DEFAULT_MAX_ENDPOINTS_PER_OWNER,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    max_endpoints_per_owner: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

    // Signal handlers are installed before the listening line, so a signal sent right after it is handled.
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_addr = listener.local_addr().context("cannot read the listening address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "hookrelay-control listening on {local_addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%local_addr, data_dir = %args.data_dir.display(), "hookrelay-control started");

    let config = Config {
        data_dir: args.data_dir,
        allow_insecure_endpoints: args.allow_insecure_endpoints,
        max_endpoints_per_owner: args.max_endpoints_per_owner,
        ..Config::default()
    };
    hookrelay_control::run(config, listener, shutdown).await
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
