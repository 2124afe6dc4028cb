//! One module per resource: each turns parsed arguments into one gRPC request and prints the answer. Nothing here
//! validates what the server validates; the server's precise refusal is printed as is.

mod agent;
mod delivery;
mod emit;
mod endpoint;
mod event_type;
mod owner;

use crate::args::{Cli, Command, OutputFormat, PageArgs};
use crate::client::{CliError, Target};

/// What every command needs: where control and the agent are, and how to print.
pub struct Context {
    pub control: Target,
    pub agent: Target,
    pub output: OutputFormat,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let context =
        Context { control: Target::control(cli.control), agent: Target::agent(cli.agent), output: cli.output };
    match cli.command {
        Command::Owner(command) => owner::run(&context, command).await,
        Command::EventType(command) => event_type::run(&context, command).await,
        Command::Endpoint(command) => endpoint::run(&context, command).await,
        Command::Delivery(command) => delivery::run(&context, command).await,
        Command::Agent(command) => agent::run(&context, command).await,
        Command::Emit(args) => emit::run(&context, args).await,
        Command::Dev(args) => crate::dev::run(args).await,
    }
}

/// `(page_size, page_token)` of a list request; 0 and "" ask for the server's defaults.
fn page(args: PageArgs) -> (u32, String) {
    (args.page_size.unwrap_or(0), args.page_token.unwrap_or_default())
}
