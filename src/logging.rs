//! Log lines: `key=value` text for people, or one JSON object per line for log pipelines.
//!
//! Why one place: every event in the code is written once, as `event=name key=value ...`; the
//! `--log-format json` rendering parses that same text into fields, so no call site knows about
//! formats. Multi-line text (a traceback) goes through `traceback`, which keeps it readable in
//! text mode and a single field in JSON mode.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

static JSON: AtomicBool = AtomicBool::new(false);

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

pub fn init(level: &str, json: bool) {
    JSON.store(json, Ordering::Relaxed);
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
        .target(env_logger::Target::Stderr)
        .init();
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A traceback from a worker: printed as is for people, as one `event=traceback` object in JSON.
pub fn traceback(text: &str) {
    if json() {
        log::error!("event=traceback traceback={text:?}");
    } else {
        eprint!("{text}");
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
