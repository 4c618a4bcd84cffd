//! `--autoreload`: watch the app's source directories and ask the master for a rolling reload.
//!
//! Why a thread of its own: notify delivers events on its own schedule and editors save in bursts
//! (write a temp file, rename, touch), so events are filtered and debounced here and the master is
//! woken once per burst. What counts is a pure `Filter`; when to fire is a pure `Debounce`; both are
//! unit-tested. Reading a file is not a change: new workers import the sources, and counting those
//! reads would reload forever.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::state::Doorbell;

/// A burst of saves ends after this much quiet...
pub const DEBOUNCE_QUIET_MS: u64 = 300;
/// ...or, for a save that never stops (a generator writing files), after this long anyway.
pub const DEBOUNCE_MAX_MS: u64 = 1500;

/// Which paths count as a change of the app's sources.
pub struct Filter {
    include: GlobSet,
    exclude: GlobSet,
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|e| format!("bad glob '{pattern}': {e}"))?);
    }
    builder.build().map_err(|e| e.to_string())
}

impl Filter {
    /// `include` empty means `*.py`. Globs match the file name, or the whole path if they hold a '/'.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, String> {
        let default = ["*.py".to_string()];
        let include = if include.is_empty() {
            &default[..]
        } else {
            include
        };
        Ok(Filter {
            include: globs(include)?,
            exclude: globs(exclude)?,
        })
    }

    pub fn counts(&self, path: &Path) -> bool {
        let in_ignored_dir = path.components().any(|c| match c {
            Component::Normal(name) => name == "__pycache__" || name == ".git",
            _ => false,
        });
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        // Editors' swap, backup and atomic-save temp files (vim, emacs, JetBrains, most others).
        let editor_temp = name.ends_with('~')
            || name.starts_with(".#")
            || name == "4913"
            || [
                ".swp",
                ".swx",
                ".swo",
                ".tmp",
                ".pyc",
                ".pyo",
                "___jb_tmp___",
                "___jb_old___",
            ]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if in_ignored_dir || editor_temp {
            return false;
        }
        let matches = |set: &GlobSet| set.is_match(name) || set.is_match(path);
        matches(&self.include) && !matches(&self.exclude)
    }
}

/// Turns a burst of events into one trigger: fire after DEBOUNCE_QUIET_MS of quiet, or
/// DEBOUNCE_MAX_MS after the first event at the latest.
#[derive(Debug, Default)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some(
            (last + Duration::from_millis(DEBOUNCE_QUIET_MS))
                .min(first + Duration::from_millis(DEBOUNCE_MAX_MS)),
        )
    }

    /// True once, when the burst is over.
    pub fn fire(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|d| now >= d) {
            *self = Debounce::default();
            return true;
        }
        false
    }
}

enum Msg {
    Watch(PathBuf, RecursiveMode),
    Fs(notify::Result<notify::Event>),
}

/// The master's handle: tell the watcher about directories; it rings the master's doorbell on a change.
pub struct Watcher {
    tx: Sender<Msg>,
}

impl Watcher {
    pub fn watch(&self, dir: PathBuf, recursive: bool) {
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let _ = self.tx.send(Msg::Watch(dir, mode));
    }
}

pub fn spawn(filter: Filter, bell: Doorbell) -> Result<Watcher, String> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(Msg::Fs(event));
    })
    .map_err(|e| format!("cannot watch files for --autoreload: {e}"))?;
    thread::Builder::new()
        .name("autoreload".into())
        .spawn(move || {
            let mut watched = HashSet::new();
            let mut debounce = Debounce::default();
            loop {
                let msg = match debounce.deadline() {
                    Some(deadline) => {
                        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    }
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match msg {
                    Ok(Msg::Watch(dir, mode)) => {
                        if watched.insert(dir.clone()) {
                            match watcher.watch(&dir, mode) {
                                Ok(()) => log::info!("event=watch dir={}", dir.display()),
                                Err(e) => {
                                    log::warn!("event=watch_failed dir={} error={e}", dir.display())
                                }
                            }
                        }
                    }
                    Ok(Msg::Fs(Ok(event))) => {
                        let change = matches!(
                            event.kind,
                            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                        );
                        if let Some(path) = event.paths.iter().find(|p| change && filter.counts(p))
                        {
                            log::debug!("event=file_changed path={}", path.display());
                            debounce.event(Instant::now());
                        }
                    }
                    Ok(Msg::Fs(Err(e))) => log::warn!("event=watch_error error={e}"),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if debounce.fire(Instant::now()) {
                    log::info!("event=autoreload");
                    bell.ring();
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(Watcher { tx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_sources_count_and_caches_and_editor_files_do_not() {
        let f = Filter::new(&[], &[]).unwrap();
        assert!(f.counts(Path::new("/app/mysite/views.py")));
        assert!(!f.counts(Path::new("/app/mysite/__pycache__/views.cpython-311.pyc")));
        assert!(!f.counts(Path::new("/app/mysite/__pycache__/views.py")));
        assert!(!f.counts(Path::new("/app/.git/index")));
        assert!(!f.counts(Path::new("/app/mysite/.views.py.swp")));
        assert!(!f.counts(Path::new("/app/mysite/views.py~")));
        assert!(!f.counts(Path::new("/app/mysite/.#views.py")));
        assert!(!f.counts(Path::new("/app/mysite/4913")));
        assert!(!f.counts(Path::new("/app/mysite/notes.txt")));
    }

    #[test]
    fn include_and_exclude_adjust_what_counts() {
        let f = Filter::new(&["*.py".into(), "*.html".into()], &["test_*.py".into()]).unwrap();
        assert!(f.counts(Path::new("/app/templates/base.html")));
        assert!(!f.counts(Path::new("/app/test_views.py")));
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn a_burst_fires_once_after_the_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert!(!d.fire(t0));
        for i in 0..10 {
            d.event(t0 + Duration::from_millis(i * 10));
        }
        assert!(!d.fire(t0 + Duration::from_millis(200)));
        assert!(d.fire(t0 + Duration::from_millis(90 + DEBOUNCE_QUIET_MS)));
        assert!(!d.fire(t0 + Duration::from_secs(5)), "once per burst");
    }

    #[test]
    fn an_endless_burst_fires_at_the_max() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        let mut fired = None;
        for i in 0..400 {
            let now = t0 + Duration::from_millis(i * 10);
            d.event(now);
            if d.fire(now) {
                fired = Some(i * 10);
                break;
            }
        }
        assert_eq!(fired, Some(DEBOUNCE_MAX_MS));
    }
}
