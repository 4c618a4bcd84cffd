//! hurricane: a process supervisor and prefork application server for Python WSGI apps.
//!
//! main parses the command line, resolves what needs resolving (the interpreter, the working
//! directory, the worker count), and maps every outcome to an exit code:
//! 0 clean shutdown, 1 fatal error, 2 bad usage, 3 the app failed to boot.

mod amqp;
mod bind;
mod celery;
mod cli;
mod docs;
mod kind;
mod lifecycle;
mod logging;
mod master;
mod metrics;
mod notify;
mod pool;
mod prestart;
mod probe;
mod reload;
mod settings;
mod signals;
mod spawn;
mod state;
mod sys;
mod trim;
mod webhook;
mod worker;
mod zygote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cli::{CeleryArgs, Cli, ConsumeArgs, Run, ServeArgs};
use crate::pool::PoolConfig;
use crate::probe::{Paths, ProbeConfig};
use crate::worker::{Mode, WorkerConfig};

const EXIT_FATAL: u8 = 1;
const EXIT_USAGE: u8 = 2;
/// Processes and threads besides the workers that count against RLIMIT_NPROC (the master's
/// threads, the probe connections, pre-start commands).
const PROCESS_MARGIN: u64 = 16;
/// consume: a handler worker silent this long (frozen) is killed; its messages are requeued.
const HEARTBEAT_TIMEOUT_S: u64 = 30;
/// How often a worker reports in (DESIGN.md: heartbeat every second).
const HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// A usage error found after parsing (a directory that does not exist, say): exit 2.
struct Usage(String);

/// Finds `name` on PATH the way execvp will, so a missing interpreter is reported before binding.
fn on_path(name: &Path) -> bool {
    if name.components().count() > 1 {
        return name.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// The workers' interpreter; a relative path is taken from where hurricane was started, before
/// --chdir.
fn python(explicit: &Option<PathBuf>) -> PathBuf {
    if let Some(python) = explicit {
        if python.components().count() > 1 {
            return std::path::absolute(python).unwrap_or_else(|_| python.clone());
        }
        return python.clone();
    }
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) if !venv.is_empty() => PathBuf::from(venv).join("bin/python"),
        _ => PathBuf::from("python3"),
    }
}

/// A static or media mount for the worker: None when off; the root may come from Django's settings.
fn mount(
    on: bool,
    url: &Option<String>,
    root: &Option<PathBuf>,
    default_url: &str,
) -> serde_json::Value {
    if !on && root.is_none() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "url": url,
        "default_url": default_url,
        "root": root.as_ref().map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()).display().to_string()),
    })
}

/// Refuses a pool the process limit could not hold (RLIMIT_NPROC): better one clear line now than
/// a fork failing halfway through startup.
fn check_process_limit(workers: usize) -> Result<(), Usage> {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NPROC) else {
        return Ok(());
    };
    // The master's own threads and processes of the user's other programs count too.
    if soft != nix::sys::resource::RLIM_INFINITY && workers as u64 + PROCESS_MARGIN >= soft {
        return Err(Usage(format!(
            "--workers {workers} needs more processes than the limit allows (ulimit -u is {soft}); \
             give fewer workers or raise the limit"
        )));
    }
    Ok(())
}

/// The probe server's settings; None with --no-probe.
fn probe_config(
    probes: &cli::ProbeArgs,
    port: Option<u16>,
    req_queue_len: Option<u32>,
    log_probes: bool,
) -> Option<ProbeConfig> {
    (!probes.no_probe).then(|| ProbeConfig {
        port,
        paths: Paths {
            startup: probes.startup_probe.clone(),
            ready: probes.readiness_probe.clone(),
            alive: probes.liveness_probe.clone(),
        },
        metrics: (!probes.no_metrics).then(|| probes.metrics.clone()),
        log_probes,
        check_interval: probes.check_interval,
        debug: probes.debug,
        req_queue_len,
        listen_fd: -1,
    })
}

fn config(args: ServeArgs) -> Result<master::Config, Usage> {
    let python = python(&args.interpreter.python);
    if let Some(dir) = &args.interpreter.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| Usage(format!("--chdir '{}': {e}", dir.display())))?;
    }
    let app = args.wsgi.clone().unwrap_or_default();
    let module = app.split(':').next().unwrap_or_default();
    if module.is_empty()
        || !module
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        return Err(Usage(format!(
            "-w '{app}' is not MODULE[:ATTR]: give a dotted module path such as mysite.wsgi, not a file name"
        )));
    }
    let prestart = prestart::Prestart {
        commands: args
            .command
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        check_migrations: args.check_migrations,
        apply_migrations: args.check_migrations_apply,
        python: python.clone(),
        pythonpath: args
            .interpreter
            .pythonpath
            .iter()
            .map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string()
            })
            .collect(),
    };
    if !prestart.is_empty()
        && std::env::var_os("DJANGO_SETTINGS_MODULE").is_none_or(|v| v.is_empty())
    {
        return Err(Usage(
            "--command and --check-migrations run Django management commands: set DJANGO_SETTINGS_MODULE".into(),
        ));
    }
    let autoreload = if args.autoreload {
        let filter = reload::Filter::new(&args.reload_include, &args.reload_exclude)
            .map_err(|e| Usage(format!("--reload-include/--reload-exclude: {e}")))?;
        Some((filter, args.reload_dir.clone()))
    } else {
        None
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    check_process_limit(workers)?;
    let worker = WorkerConfig {
        app: app.clone(),
        pythonpath: args.interpreter.pythonpath_strings(),
        keep_alive: args.keep_alive,
        graceful_timeout: args.graceful_timeout,
        heartbeat: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
        autoreload: args.autoreload,
        workers,
        http: serde_json::json!({
            "threads": args.threads,
            "access_log": args.access_log,
            "log_format": args.log.log_format,
            "log_file": args.log.log_file.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            "limit_request_line": args.limit_request_line,
            "limit_request_fields": args.limit_request_fields,
            "limit_request_field_size": args.limit_request_field_size,
            "max_body_size": args.max_body_size,
            "min_body_rate": args.min_body_rate,
            "write_timeout": args.write_timeout.as_secs_f64(),
            "forwarded_allow_ips": args.forwarded_allow_ips.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            "static": mount(args.r#static, &args.static_url, &args.static_root, "/static/"),
            "media": mount(args.media, &args.media_url, &args.media_root, "/media/"),
        }),
        mode: Mode::Http,
        preload: args.preload,
    };
    Ok(master::Config {
        listen: Some(master::Listen {
            bind: args.bind,
            port: args.port,
            backlog: args.backlog,
        }),
        probe_bind: args.bind,
        consume: None,
        celery: None,
        kind: Rc::new(kind::Http {
            python: python.clone(),
            config: worker,
        }),
        app,
        probe: probe_config(
            &args.probes,
            args.probe_port,
            args.req_queue_len,
            args.log.log_probes,
        ),
        pool: PoolConfig {
            size: workers,
            boot_timeout: args.boot_timeout,
            graceful_timeout: args.graceful_timeout,
            shutdown_delay: args.shutdown_delay,
            timeout: Some(args.timeout).filter(|t| !t.is_zero()),
            heartbeat_timeout: Some(args.heartbeat_timeout).filter(|t| !t.is_zero()),
            max_requests: Some(args.max_requests).filter(|n| *n > 0),
            max_requests_jitter: args.max_requests_jitter,
            max_memory_bytes: Some(args.max_memory.saturating_mul(1 << 20)).filter(|n| *n > 0),
            // Two pods started together still recycle their workers at different moments.
            jitter_seed: u64::from(std::process::id()),
        },
        autoreload,
        webhook_urls: args.webhook_url.clone(),
        prestart,
        python,
    })
}

/// The command line, with Django settings (HURRICANE_*, and for consume AMQP_*) in between it and
/// the environment.
fn parse_args() -> (Run, Vec<String>) {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let first = Cli::from_arg_matches(&matches)
        .unwrap_or_else(|e| e.exit())
        .into_run();
    if let Run::Celery(_) | Run::GenerateDocs(_) = first {
        return (first, Vec::new()); // the Celery app has its own configuration
    }
    let (chdir, pythonpath, explicit_python, subcommand, prefixes) = match &first {
        Run::Serve(a) => (
            &a.interpreter.chdir,
            &a.interpreter.pythonpath,
            &a.interpreter.python,
            "serve",
            &["HURRICANE_"][..],
        ),
        Run::Consume(a) => (
            &a.interpreter.chdir,
            &a.interpreter.pythonpath,
            &a.interpreter.python,
            "consume",
            &["HURRICANE_", "AMQP_"][..],
        ),
        Run::Celery(_) | Run::GenerateDocs(_) => unreachable!("returned above"),
    };
    let cwd = match chdir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        None => PathBuf::from("."),
    };
    let pythonpath: Vec<String> = pythonpath.iter().map(|p| p.display().to_string()).collect();
    let Some(found) = settings::read(&python(explicit_python), &cwd, &pythonpath, prefixes)
        .filter(|s| !s.is_empty())
    else {
        return (first, Vec::new());
    };
    let (extra, warnings) = settings::as_args(&found, &matches, subcommand);
    if extra.is_empty() {
        return (first, warnings);
    }
    let mut all = argv;
    all.extend(extra.into_iter().map(std::ffi::OsString::from));
    match Cli::try_parse_from(all) {
        Ok(cli) => (cli.into_run(), warnings),
        Err(e) => {
            let names: Vec<String> = prefixes.iter().map(|p| format!("{p}*")).collect();
            eprintln!(
                "error: a {} setting in the Django settings is not valid:",
                names.join(" or ")
            );
            e.exit()
        }
    }
}

/// The broker's address and credentials: --amqp-url, else the --amqp-* options (guest/guest as
/// pika's defaults); a missing host is a usage error.
fn broker_uri(args: &ConsumeArgs) -> Result<lapin::uri::AMQPUri, Usage> {
    if let Some(url) = &args.amqp_url {
        return url.parse().map_err(|e| {
            Usage(format!(
                "--amqp-url is not a broker URL ({e}); give amqp://USER:PASSWORD@HOST:PORT/VHOST"
            ))
        });
    }
    let Some(host) = args.amqp_host.clone().filter(|h| !h.trim().is_empty()) else {
        return Err(Usage(
            "no broker host: pass --amqp-host HOST (or set AMQP_HOST in the Django settings or the environment), or --amqp-url".into(),
        ));
    };
    let mut uri = lapin::uri::AMQPUri::default();
    uri.authority.host = host;
    uri.authority.port = args.amqp_port;
    uri.vhost = args.amqp_vhost.clone();
    if let Some(user) = &args.amqp_user {
        uri.authority.userinfo.username = user.clone();
    }
    if let Some(password) = &args.amqp_password {
        uri.authority.userinfo.password = password.clone();
    }
    Ok(uri)
}

fn consume_config(args: ConsumeArgs) -> Result<master::Config, Usage> {
    let python = python(&args.interpreter.python);
    if let Some(dir) = &args.interpreter.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| Usage(format!("--chdir '{}': {e}", dir.display())))?;
    }
    let handler = args.handler.clone();
    let (module, class) = handler
        .split_once(':')
        .or_else(|| handler.rsplit_once('.'))
        .unwrap_or(("", ""));
    let dotted = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    if !dotted(module) || !dotted(class) {
        return Err(Usage(format!(
            "HANDLER '{handler}' is not a dotted path to a class, such as myapp.consumer.MyHandler"
        )));
    }
    let uri = broker_uri(&args)?;
    let display = amqp::broker::Settings::describe(&uri);
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    check_process_limit(workers)?;
    let autoreload = if args.autoreload {
        let filter =
            reload::Filter::new(&[], &[]).map_err(|e| Usage(format!("--autoreload: {e}")))?;
        Some((filter, Vec::new()))
    } else {
        None
    };
    let worker = WorkerConfig {
        app: handler.clone(),
        pythonpath: args.interpreter.pythonpath_strings(),
        keep_alive: Duration::ZERO,
        graceful_timeout: args.graceful_timeout,
        heartbeat: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
        autoreload: args.autoreload,
        workers,
        http: serde_json::json!({
            "log_format": args.log.log_format,
            "log_file": args.log.log_file.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        }),
        // What a TopicHandler's constructor is given, as in django-hurricane.
        mode: Mode::Amqp(serde_json::json!({
            "queue": args.queue,
            "exchange": args.exchange,
            "host": uri.authority.host,
            "port": uri.authority.port,
            "vhost": uri.vhost,
            "user": uri.authority.userinfo.username,
            "password": uri.authority.userinfo.password,
        })),
        preload: args.preload,
    };
    let prefetch = usize::from(args.prefetch);
    Ok(master::Config {
        listen: None,
        probe_bind: args.bind,
        celery: None,
        consume: Some(amqp::Config {
            broker: amqp::broker::Settings {
                uri,
                display,
                queue: args.queue.clone(),
                exchange: args.exchange.clone(),
                durable: args.durable,
                prefetch: args.prefetch,
                reconnect: args.reconnect,
                connection_name: format!("hurricane-{}", std::process::id()),
            },
            routing_keys: args.routing_key.clone(),
            reconnect_timeout: Some(args.reconnect_timeout)
                .filter(|t| !t.is_zero() && args.reconnect),
            // Enough per worker that none waits on the master between messages, and every
            // prefetched delivery has a place.
            window: prefetch.div_ceil(workers).max(2),
        }),
        kind: Rc::new(kind::AmqpHandler {
            python: python.clone(),
            config: worker,
        }),
        app: handler,
        probe: probe_config(
            &args.probes,
            Some(args.probe_port),
            None,
            args.log.log_probes,
        ),
        pool: PoolConfig {
            size: workers,
            boot_timeout: args.boot_timeout,
            graceful_timeout: args.graceful_timeout,
            shutdown_delay: Duration::ZERO,
            timeout: Some(args.timeout).filter(|t| !t.is_zero()),
            heartbeat_timeout: Some(Duration::from_secs(HEARTBEAT_TIMEOUT_S)),
            max_requests: None,
            max_requests_jitter: 0,
            max_memory_bytes: None,
            jitter_seed: u64::from(std::process::id()),
        },
        autoreload,
        webhook_urls: args.webhook_url.clone(),
        prestart: prestart::Prestart {
            python: python.clone(),
            ..prestart::Prestart::default()
        },
        python,
    })
}

/// Where a program is: itself if it names a path, else the first match on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path
            .is_file()
            .then(|| std::path::absolute(path).unwrap_or_else(|_| path.into()));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A script's interpreter, from its `#!` line (`#!/usr/bin/env python3` included).
fn shebang(script: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(script).ok()?, &mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?.lines().next()?;
    let mut words = line.strip_prefix("#!")?.split_whitespace();
    let first = words.next()?;
    if first.ends_with("/env") {
        return Some(PathBuf::from(words.find(|w| !w.starts_with('-'))?));
    }
    Some(PathBuf::from(first))
}

fn is_python(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
}

/// How the bootstrap runs the command: (interpreter, {module|path, argv}).
fn celery_command(args: &CeleryArgs) -> Result<(PathBuf, serde_json::Value), Usage> {
    let command = &args.command;
    let program = &command[0];
    let found = find_program(program).ok_or_else(|| {
        Usage(format!(
            "cannot find '{program}' on PATH; activate the virtualenv that has Celery, or give its path"
        ))
    })?;
    let explicit = args
        .interpreter
        .python
        .as_ref()
        .map(|p| python(&Some(p.clone())));
    if is_python(&found) {
        let interpreter = explicit.unwrap_or(found);
        return match command.get(1).map(String::as_str) {
            Some("-m") if command.len() > 2 => Ok((
                interpreter,
                serde_json::json!({"module": command[2], "argv": command[2..]}),
            )),
            Some(script) if !script.starts_with('-') => Ok((
                interpreter,
                serde_json::json!({"path": script, "argv": command[1..]}),
            )),
            _ => Err(Usage(format!(
                "'{}' is not a Celery command: give `celery -A proj worker`, `python -m celery ...` or a script",
                command.join(" ")
            ))),
        };
    }
    let interpreter = match explicit.or_else(|| shebang(&found)) {
        Some(python) => python,
        None => {
            return Err(Usage(format!(
                "'{}' is not a Python script (no #! line); hurricane celery runs Python programs: pass --python PATH if it is one",
                found.display()
            )));
        }
    };
    if !is_python(&interpreter) {
        return Err(Usage(format!(
            "'{}' is run by '{}', not by Python; hurricane celery runs Python programs (pass --python to override)",
            found.display(),
            interpreter.display()
        )));
    }
    let mut argv = vec![found.display().to_string()];
    argv.extend(command[1..].iter().cloned());
    Ok((
        interpreter,
        serde_json::json!({"path": found, "argv": argv}),
    ))
}

fn celery_config(args: CeleryArgs) -> Result<master::Config, Usage> {
    let (python, mut command) = celery_command(&args)?;
    if let Some(dir) = &args.interpreter.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| Usage(format!("--chdir '{}': {e}", dir.display())))?;
    }
    command["liveness_s"] = serde_json::json!(args.liveness_timeout.as_secs_f64());
    let display = args.command.join(" ");
    command["display"] = serde_json::json!(display);
    let worker = WorkerConfig {
        app: display.clone(),
        pythonpath: args.interpreter.pythonpath_strings(),
        keep_alive: Duration::ZERO,
        graceful_timeout: args.graceful_timeout,
        heartbeat: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
        autoreload: false,
        workers: 1,
        http: serde_json::json!({}),
        mode: Mode::Celery(command),
        preload: false,
    };
    Ok(master::Config {
        listen: None,
        probe_bind: args.bind,
        consume: None,
        celery: Some(args.liveness_timeout),
        kind: Rc::new(kind::Command {
            python: python.clone(),
            config: worker,
        }),
        app: display,
        probe: probe_config(
            &args.probes,
            Some(args.probe_port),
            None,
            args.log.log_probes,
        ),
        pool: PoolConfig {
            size: 1,
            // Our hooks report in at once; Celery's own start is judged by worker_ready.
            boot_timeout: Duration::from_secs(60),
            graceful_timeout: args.graceful_timeout,
            shutdown_delay: Duration::ZERO,
            timeout: None,
            heartbeat_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            max_memory_bytes: None,
            jitter_seed: u64::from(std::process::id()),
        },
        autoreload: None,
        webhook_urls: args.webhook_url.clone(),
        prestart: prestart::Prestart {
            python: python.clone(),
            ..prestart::Prestart::default()
        },
        python,
    })
}

fn main() -> ExitCode {
    let (run, warnings) = parse_args();
    let (level, json, file) = match run.log() {
        Some(log) => (
            log.log_level.as_str(),
            log.log_format == "json",
            log.log_file.as_deref(),
        ),
        None => ("warn", false, None),
    };
    if let Err(e) = logging::init(level, json, file) {
        let path = file.unwrap_or(Path::new("")).display();
        eprintln!("error: cannot open --log-file '{path}': {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    for warning in warnings {
        log::warn!("{warning}");
    }
    let config = match run {
        Run::GenerateDocs(dir) => {
            return match docs::generate(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the docs into '{}': {e}", dir.display());
                    ExitCode::from(EXIT_FATAL)
                }
            };
        }
        Run::Serve(args) => config(args),
        Run::Consume(args) => consume_config(args),
        Run::Celery(args) => celery_config(args),
    };
    let config = match config {
        Ok(config) => config,
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !on_path(&config.python) {
        eprintln!(
            "error: cannot find python '{}'; pass --python PATH or activate a virtualenv",
            config.python.display()
        );
        return ExitCode::from(EXIT_FATAL);
    }
    match master::run(config) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
