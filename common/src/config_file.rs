//! TOML configuration files for the binaries. Every key is a long flag's name with `_` for `-`
//! (`max_payload_bytes = 1048576` for `--max-payload-bytes`). A file value is used only where neither the flag nor
//! its `HOOKRELAY_*` variable is given, so settings come from defaults, then the file, then the environment, then
//! flags. Every problem of a file (unknown keys, values of the wrong shape) is reported at once.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Command};

/// The flag naming the file.
pub const CONFIG_FLAG: &str = "config";
/// The variable naming the file when the flag is absent.
pub const ENV_CONFIG: &str = "HOOKRELAY_CONFIG";

/// Why a configuration file could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("config file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The file's content is wrong; every problem found is listed.
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// Flag, variable or file values that their flags' parsers refuse; every one is listed.
    #[error("{} invalid setting(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Values(Vec<String>),
}

/// The process's arguments merged with the configuration file, once every value in them passed its parser.
pub fn load(command: &Command) -> Result<Vec<OsString>, ConfigFileError> {
    let args = with_file_values(command, std::env::args_os().collect())?;
    let found = problems(command, &args);
    if found.is_empty() { Ok(args) } else { Err(ConfigFileError::Values(found)) }
}

/// The settings of a server binary from its flags, env vars and configuration file. Like clap's `parse`, it prints
/// the problems and exits with status 2 when they do not make a valid command line.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match load(&T::command()) {
        Ok(args) => T::parse_from(args),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}

/// `args` (the process's arguments, program name first) with the values of the configuration file, if one is
/// named by `--config` or `HOOKRELAY_CONFIG`, inserted for every setting that neither a flag nor its variable sets.
pub fn with_file_values(command: &Command, args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(path) = config_path(&args) else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .map_err(|error| ConfigFileError::Read { path: path.display().to_string(), message: error.to_string() })?;
    let table: toml::Table = toml::from_str(&text).map_err(|error| ConfigFileError::Invalid {
        path: path.display().to_string(),
        problems: vec![error.message().to_owned()],
    })?;
    let given: Vec<String> = args.iter().filter_map(|arg| arg.to_str()).map(str::to_owned).collect();
    let mut problems = Vec::new();
    let mut extra = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|arg| arg.get_long() == Some(long.as_str())) else {
            problems.push(format!("{key}: not a setting of {} (see --help)", command.get_name()));
            continue;
        };
        if long == CONFIG_FLAG {
            problems.push(format!("{key}: a config file cannot name another one"));
            continue;
        }
        let flag = format!("--{long}");
        let on_command_line = given.iter().any(|arg| arg == &flag || arg.starts_with(&format!("{flag}=")));
        let in_environment = arg.get_env().is_some_and(|name| std::env::var_os(name).is_some());
        if on_command_line || in_environment {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (value, switch) {
            (toml::Value::Boolean(true), true) => extra.push(flag.into()),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => problems.push(format!("{key}: expected true or false")),
            (value, false) => match scalar(value) {
                Some(text) => extra.extend([flag.into(), text.into()]),
                None => problems.push(format!("{key}: expected a string, number, boolean or list of them")),
            },
        }
    }
    if !problems.is_empty() {
        return Err(ConfigFileError::Invalid { path: path.display().to_string(), problems });
    }
    let mut merged = args;
    merged.extend(extra);
    Ok(merged)
}

/// Checks every value the command line and the environment give (the file's values are in `args` by then) against
/// its flag's parser, and returns every problem, so an operator fixes them all in one go instead of one per start.
pub fn problems(command: &Command, args: &[OsString]) -> Vec<String> {
    let mut problems = Vec::new();
    for arg in command.get_arguments() {
        let (Some(long), true) = (arg.get_long(), arg.get_action().takes_values()) else { continue };
        let flag = format!("--{long}");
        let mut values: Vec<(String, OsString)> = Vec::new();
        let mut iter = args.iter().skip(1);
        while let Some(given) = iter.next() {
            let text = given.to_string_lossy();
            if text == flag {
                if let Some(value) = iter.next() {
                    values.push((flag.clone(), value.clone()));
                }
            } else if let Some(value) = text.strip_prefix(&format!("{flag}=")) {
                values.push((flag.clone(), value.into()));
            }
        }
        if values.is_empty()
            && let Some(name) = arg.get_env()
            && let Some(value) = std::env::var_os(name)
        {
            values.push((name.to_string_lossy().into_owned(), value));
        }
        let delimiter = arg.get_value_delimiter();
        for (source, value) in values {
            let parts: Vec<OsString> = match (delimiter, value.to_str()) {
                (Some(delimiter), Some(text)) => text.split(delimiter).map(OsString::from).collect(),
                _ => vec![value],
            };
            // The flag alone, freed of its relations to other flags, judges each value with its own parser.
            let alone = arg
                .clone()
                .required(false)
                .requires(clap::builder::Resettable::<clap::Id>::Reset)
                .conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)
                .value_delimiter(None)
                .num_args(1)
                .action(ArgAction::Set);
            let judge = Command::new("value").no_binary_name(true).arg(alone);
            for part in parts {
                if let Err(error) = judge.clone().try_get_matches_from([OsString::from(&flag), part]) {
                    let reason = error.to_string();
                    let reason = reason.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
                    problems.push(format!("{source}: {reason}"));
                }
            }
        }
    }
    problems
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_str().unwrap_or_default();
        if text == flag {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(ENV_CONFIG).map(PathBuf::from)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>().map(|items| items.join(",")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn command() -> Command {
        Command::new("demo")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("listen").long("listen").default_value("127.0.0.1:1"))
            .arg(Arg::new("cidrs").long("allowed-cidrs").value_delimiter(','))
            .arg(Arg::new("grace").long("grace-secs").env("HOOKRELAY_TEST_CONFIG_FILE_GRACE_UNSET"))
            .arg(Arg::new("insecure").long("insecure").action(ArgAction::SetTrue))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn run(args: &[&str]) -> Result<clap::ArgMatches, ConfigFileError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let merged = with_file_values(&command(), args)?;
        Ok(command().try_get_matches_from(merged).unwrap())
    }

    #[test]
    fn file_values_fill_in_below_flags() {
        let config = file(
            "listen = \"10.0.0.1:7200\"\nallowed_cidrs = [\"10.0.0.0/8\", \"127.0.0.0/8\"]\ngrace_secs = 3\ninsecure = true\n",
        );
        let path = config.path().to_str().unwrap();
        let matches = run(&["demo", "--config", path]).unwrap();
        assert_eq!(matches.get_one::<String>("listen").unwrap(), "10.0.0.1:7200");
        let cidrs: Vec<_> = matches.get_many::<String>("cidrs").unwrap().collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "127.0.0.0/8"]);
        assert_eq!(matches.get_one::<String>("grace").unwrap(), "3");
        assert!(matches.get_flag("insecure"));
        let flag_wins = run(&["demo", &format!("--config={path}"), "--listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(flag_wins.get_one::<String>("listen").unwrap(), "127.0.0.1:9");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = file("lisen = \"x\"\ninsecure = \"yes\"\n[table]\nkey = 1\n");
        let error = run(&["demo", "--config", config.path().to_str().unwrap()]).unwrap_err();
        let ConfigFileError::Invalid { problems, .. } = &error else { panic!("{error}") };
        assert_eq!(problems.len(), 3, "{error}");
        let text = error.to_string();
        assert!(text.contains("lisen: not a setting of demo"), "{text}");
        assert!(text.contains("insecure: expected true or false"), "{text}");
        assert!(text.contains("table: not a setting"), "{text}");
    }

    #[test]
    fn every_bad_value_is_found_not_only_the_first() {
        let command = Command::new("demo")
            .arg(Arg::new("port").long("port").value_parser(clap::value_parser!(u16)))
            .arg(Arg::new("count").long("count").value_parser(clap::value_parser!(u32)))
            .arg(Arg::new("ips").long("ips").value_delimiter(',').value_parser(clap::value_parser!(std::net::IpAddr)))
            .arg(Arg::new("name").long("name"));
        let args: Vec<OsString> = ["demo", "--port", "99999", "--count=-1", "--ips", "10.0.0.1,nope", "--name", "ok"]
            .iter()
            .map(OsString::from)
            .collect();
        let found = problems(&command, &args);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("--port: "), "{found:?}");
        assert!(found[1].starts_with("--count: "), "{found:?}");
        assert!(found[2].starts_with("--ips: ") && found[2].contains("nope"), "{found:?}");
        let fine: Vec<OsString> = ["demo", "--port", "80"].iter().map(OsString::from).collect();
        assert!(problems(&command, &fine).is_empty());
    }

    #[test]
    fn no_file_changes_nothing_and_a_missing_file_is_an_error() {
        let args: Vec<OsString> = ["demo", "--listen", "127.0.0.1:2"].iter().map(OsString::from).collect();
        assert_eq!(with_file_values(&command(), args.clone()).unwrap(), args);
        let missing = run(&["demo", "--config", "/nonexistent/hookrelay.toml"]).unwrap_err();
        assert!(matches!(missing, ConfigFileError::Read { .. }), "{missing}");
    }
}
