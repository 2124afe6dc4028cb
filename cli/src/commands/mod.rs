//! One module per resource: each turns parsed arguments into one gRPC request and prints the answer. Nothing here
//! validates what the server validates; the server's precise refusal is printed as is.

mod agent;
mod delivery;
mod emit;
mod endpoint;
mod event_type;
mod owner;
mod wait;

use crate::args::{Cli, Command, OutputFormat, PageArgs};
use crate::client::{Bearer, CliError, Target};

/// What every command needs: where control and the agent are, and how to print.
pub struct Context {
    pub control: Target,
    pub agent: Target,
    pub output: OutputFormat,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "hookrelay", &mut script);
        // A reader that stops early (`| head`) is no reason to fail.
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
        return Ok(());
    }
    let (bearer, ca) = (bearer(&cli)?, read_ca(&cli)?);
    let control = Target::control(cli.control).with_credentials(bearer, ca);
    let agent_bearer = match cli.agent_token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => Bearer::new(token)?,
        _ => Bearer::default(),
    };
    let agent = Target::agent(cli.agent).with_credentials(agent_bearer, None);
    let context = Context { control, agent, output: cli.output };
    match cli.command {
        Command::Owner(command) => owner::run(&context, command).await,
        Command::EventType(command) => event_type::run(&context, command).await,
        Command::Endpoint(command) => endpoint::run(&context, command).await,
        Command::Delivery(command) => delivery::run(&context, command).await,
        Command::Agent(command) => agent::run(&context, command).await,
        Command::Emit(args) => emit::run(&context, args).await,
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Completions { .. } => unreachable!("answered above"),
    }
}

/// The bearer token from `--token` or `--token-file` (its first non-empty line).
fn bearer(cli: &Cli) -> Result<Bearer, CliError> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read the token file {}: {error}", path.display()))?
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the token file {} is empty", path.display()))?
            .to_owned(),
        (None, None) => return Ok(Bearer::default()),
    };
    if token.trim().is_empty() {
        return Ok(Bearer::default());
    }
    Bearer::new(&token)
}

/// The PEM of `--ca`.
fn read_ca(cli: &Cli) -> Result<Option<Vec<u8>>, CliError> {
    let Some(path) = &cli.ca else { return Ok(None) };
    let pem =
        std::fs::read(path).map_err(|error| anyhow::anyhow!("cannot read the CA file {}: {error}", path.display()))?;
    Ok(Some(pem))
}

/// `(page_size, page_token)` of a list request; 0 and "" ask for the server's defaults.
fn page(args: PageArgs) -> (u32, String) {
    (args.page_size.unwrap_or(0), args.page_token.unwrap_or_default())
}
