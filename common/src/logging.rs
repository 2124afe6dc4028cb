//! How both binaries write their logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as
//! human-readable lines or one JSON object per line.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Env var of `--log-format`.
pub const ENV_LOG_FORMAT: &str = "HOOKRELAY_LOG_FORMAT";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, fields at the top level (for log collectors).
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), everything goes to stderr.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
