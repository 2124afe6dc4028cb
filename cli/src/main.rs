//! `hookrelay`: the command line of hookrelay's control plane. It covers every AdminService call (owners, event
//! types, endpoints, deliveries, agents), emits events through an agent, and `hookrelay dev` runs the whole system
//! on this machine.
//!
//! Layout: [`args`] is the command line, [`commands`] turns it into gRPC calls, [`output`] and [`json`] print the
//! answers, [`client`] connects and maps failures to exit codes, [`dev`] and [`demo_receiver`] are the sandbox.

mod args;
mod client;
mod commands;
mod demo_receiver;
mod dev;
mod json;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Usage errors exit with 2 here, before anything is sent.
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
