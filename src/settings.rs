//! Options from Django settings: `HURRICANE_PORT = 9000` in settings.py configures hurricane.
//!
//! Precedence is command line, then Django settings, then the environment, then defaults. Why by
//! re-parsing: clap knows where each value came from (`value_source`), and appending a setting as a
//! flag makes it beat the environment and the default while a real command-line flag stays as is.
//! clap then checks a setting's value exactly as it checks a flag's, so `HURRICANE_WORKERS = "four"`
//! fails with the same clear message.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use serde_json::Value;

use crate::cli::Cli;

/// Reads every HURRICANE_* Django setting with a short-lived `python`; None when not a Django
/// project or Django cannot load (the workers will say why, with a traceback).
pub fn read(
    python: &Path,
    cwd: &Path,
    pythonpath: &[String],
    prefixes: &[&str],
) -> Option<BTreeMap<String, Value>> {
    std::env::var_os("DJANGO_SETTINGS_MODULE").filter(|v| !v.is_empty())?;
    let script = r#"
import json, os, sys
prefixes = tuple(sys.argv[1].split(","))
sys.path[:0] = [p for p in sys.argv[2:] if p] + [os.getcwd()]
from django.conf import settings
names = [n for n in dir(settings) if n.startswith(prefixes)]
print(json.dumps({n: getattr(settings, n) for n in names}, default=str))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(prefixes.join(","))
        .args(pythonpath)
        .current_dir(cwd)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The extra command-line words for the settings, and warnings for names that mean nothing.
pub fn as_args(
    settings: &BTreeMap<String, Value>,
    matches: &ArgMatches,
    subcommand: &str,
) -> (Vec<String>, Vec<String>) {
    let command = Cli::command();
    let this = command.find_subcommand(subcommand).expect("a subcommand");
    // Names another command knows are not misspellings (serve's HURRICANE_STATIC under consume).
    let elsewhere: std::collections::BTreeSet<String> = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| Some(a.get_env()?.to_str()?.to_string()))
        .collect();
    // env name -> (arg id, long flag, takes a value)
    let known: BTreeMap<String, (String, String, bool)> = this
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            let long = a.get_long()?.to_string();
            Some((
                env,
                (
                    a.get_id().to_string(),
                    long,
                    a.get_num_args().is_none_or(|n| n.takes_values()),
                ),
            ))
        })
        .collect();
    let matches = matches.subcommand_matches(subcommand).unwrap_or(matches);
    let mut args = Vec::new();
    let mut warnings = Vec::new();
    for (name, value) in settings {
        let Some((id, long, takes_value)) = known.get(name) else {
            if elsewhere.contains(name) || !name.starts_with("HURRICANE_") {
                continue; // another command's option, or an AMQP_* setting of the user's own
            }
            let nearest = known
                .keys()
                .min_by_key(|k| distance(k, name))
                .cloned()
                .unwrap_or_default();
            warnings.push(format!(
                "event=unknown_setting setting={name} hint=\"not a hurricane setting; did you mean {nearest}?\""
            ));
            continue;
        };
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            continue; // the command line wins
        }
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().map(scalar).collect(),
            other => vec![scalar(other)],
        };
        if !takes_value {
            // A flag: True sets it; False leaves it unset.
            if values.iter().any(|v| v == "true") {
                args.push(format!("--{long}"));
            } else if values.iter().any(|v| v != "false") {
                args.push(format!("--{long}={}", values.join(","))); // clap rejects it, and says why
            }
            continue;
        }
        for v in values {
            args.push(format!("--{long}={v}"));
        }
    }
    (args, warnings)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn matches(args: &[&str]) -> ArgMatches {
        Cli::command().get_matches_from(std::iter::once("hurricane").chain(args.iter().copied()))
    }

    #[test]
    fn settings_become_flags_unless_the_command_line_set_them() {
        let mut settings = BTreeMap::new();
        settings.insert("HURRICANE_PORT".to_string(), Value::from(9000));
        settings.insert("HURRICANE_WORKERS".to_string(), Value::from(3));
        settings.insert("HURRICANE_NO_PROBE".to_string(), Value::from(true));
        settings.insert(
            "HURRICANE_COMMAND".to_string(),
            serde_json::json!(["migrate --noinput", "collectstatic"]),
        );
        let (args, warnings) =
            as_args(&settings, &matches(&["-w", "a", "--workers", "2"]), "serve");
        assert!(warnings.is_empty());
        assert_eq!(
            args,
            vec![
                "--command=migrate --noinput",
                "--command=collectstatic",
                "--no-probe",
                "--port=9000"
            ]
        );
        let mut argv = vec!["hurricane", "-w", "a", "--workers", "2"];
        argv.extend(args.iter().map(String::as_str));
        let cli = Cli::try_parse_from(argv).unwrap().into_serve();
        assert_eq!((cli.port, cli.workers), (9000, Some(2)));
    }

    #[test]
    fn unknown_settings_get_the_nearest_name() {
        let mut settings = BTreeMap::new();
        settings.insert("HURRICANE_WORKRES".to_string(), Value::from(4));
        let (args, warnings) = as_args(&settings, &matches(&["-w", "a"]), "serve");
        assert!(args.is_empty());
        assert!(
            warnings[0].contains("did you mean HURRICANE_WORKERS?"),
            "{warnings:?}"
        );
    }
}
