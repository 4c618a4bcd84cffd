//! Log lines: `key=value` text for people, or one JSON object per line for log pipelines.
//!
//! Why one place: every event in the code is written once, as `event=name key=value ...`; the
//! `--log-format json` rendering parses that same text into fields, so no call site knows about
//! formats. Multi-line text (a traceback) goes through `traceback`, which keeps it readable in
//! text mode and a single field in JSON mode.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

static JSON: AtomicBool = AtomicBool::new(false);
/// --log-file, once opened: SIGUSR1 swaps the file inside for a freshly opened one.
static LOG_FILE: OnceLock<(PathBuf, Arc<Mutex<File>>)> = OnceLock::new();

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The log writer for --log-file: every line goes to whichever file is current.
struct Reopenable(Arc<Mutex<File>>);

impl Write for Reopenable {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// SIGUSR1: reopen --log-file (after logrotate moved it). False when there is no log file.
pub fn reopen() -> io::Result<bool> {
    let Some((path, file)) = LOG_FILE.get() else {
        return Ok(false);
    };
    let fresh = open_log(path)?;
    *file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    Ok(true)
}

/// Splits `event=x key="quoted value" n=3` into pairs; a word without `=` goes into `msg`.
pub fn fields(line: &str) -> Map<String, Value> {
    let mut map = Map::new();
    let mut rest = line.trim();
    let mut loose = Vec::new();
    while !rest.is_empty() {
        let (word, tail) = match rest.find('=') {
            Some(eq) if !rest[..eq].contains(' ') => {
                let key = &rest[..eq];
                let after = &rest[eq + 1..];
                let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
                    // A Rust {:?} string: find the closing quote that is not escaped.
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in quoted.char_indices() {
                        match c {
                            '\\' if !escaped => escaped = true,
                            '"' if !escaped => {
                                end = Some(i);
                                break;
                            }
                            _ => escaped = false,
                        }
                    }
                    let end = end.unwrap_or(quoted.len());
                    let raw = &quoted[..end];
                    let value = serde_json::from_str::<String>(&format!("\"{raw}\""))
                        .unwrap_or_else(|_| raw.to_string());
                    (Value::String(value), quoted.get(end + 1..).unwrap_or(""))
                } else {
                    let end = after.find(' ').unwrap_or(after.len());
                    let raw = &after[..end];
                    let value = raw
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::String(raw.to_string()));
                    (value, &after[end..])
                };
                map.insert(key.to_string(), value);
                (None, tail)
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (Some(&rest[..end]), &rest[end..])
            }
        };
        if let Some(word) = word {
            loose.push(word);
        }
        rest = tail.trim_start();
    }
    if !loose.is_empty() {
        map.insert("msg".into(), Value::String(loose.join(" ")));
    }
    map
}

/// Sets up logging; with a `file`, log lines go there (appended) instead of stderr.
pub fn init(level: &str, json: bool, file: Option<&Path>) -> io::Result<()> {
    JSON.store(json, Ordering::Relaxed);
    let target = match file {
        Some(path) => {
            let shared = Arc::new(Mutex::new(open_log(path)?));
            let _ = LOG_FILE.set((path.to_path_buf(), shared.clone()));
            env_logger::Target::Pipe(Box::new(Reopenable(shared)))
        }
        None => env_logger::Target::Stderr,
    };
    env_logger::Builder::new()
        .parse_filters(level)
        .format(move |buf, record| {
            let ts = buf.timestamp_millis().to_string();
            if json {
                let mut map = Map::new();
                map.insert("ts".into(), Value::String(ts));
                map.insert("level".into(), Value::String(record.level().to_string()));
                map.extend(fields(&record.args().to_string()));
                writeln!(buf, "{}", Value::Object(map))
            } else {
                writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
            }
        })
        .target(target)
        .init();
    Ok(())
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A traceback from a worker: as is, after a timestamp, for people; one `event=traceback` object
/// in JSON.
pub fn traceback(text: &str) {
    if json() {
        log::error!("event=traceback traceback={text:?}");
    } else {
        log::error!("{}", text.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines_become_fields() {
        let map = fields(r#"event=timeout worker=3 pid=1234 path="/a b\"c" elapsed_s=1.5"#);
        assert_eq!(map["event"], "timeout");
        assert_eq!(map["worker"], 3);
        assert_eq!(map["path"], "/a b\"c");
        assert_eq!(map["elapsed_s"], "1.5");
        let map = fields("cannot import 'x': ModuleNotFoundError (cwd=/app) event=boot_failed");
        assert_eq!(map["event"], "boot_failed");
        assert!(
            map["msg"]
                .as_str()
                .unwrap()
                .starts_with("cannot import 'x'")
        );
    }

    #[test]
    fn a_multi_line_quoted_value_round_trips() {
        let text = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: no\n";
        let map = fields(&format!("event=traceback traceback={text:?}"));
        assert_eq!(map["traceback"], text);
    }
}
