//! Hands back the pages of code and read-only data that the master touched once and does not need
//! resident: its own and its shared libraries'.
//!
//! Why: parsing the command line, building the bootstrap and starting the first pool run once, and
//! a crash, a reload or a probe flood runs code that then sits idle again; the kernel keeps every
//! page touched (and 64 KiB around each fault) mapped for the life of the process, counted against
//! the pod like the workers' memory. That was most of the master's 5-6 MB: its own binary's code
//! and read-only data, libc's, the dynamic loader's. Once the first pool is ready, and again when
//! the loop has been quiet a while after work, MADV_DONTNEED drops those pages from the master's
//! page tables; what runs again is mapped back from the page cache at its next use (a minor
//! fault, no I/O: the pages stay in the cache, shared with every other process using them).
//!
//! Only mappings that are read-only, backed by a file and hold no private (copied-on-write) page
//! are released: for those the file *is* the content, so nothing can be lost. A read-only mapping
//! with private pages (the loader's relocated RELRO data) is left alone.

use std::time::{Duration, Instant};

/// Growth of the resident set since the last release that is worth releasing again.
const REGROWTH_BYTES: u64 = 256 << 10;
/// Releases are at least this far apart: the code a burst of work runs is refaulted only once.
const MIN_INTERVAL_MS: u64 = 2000;
/// The loop is quiet when its last poll waited this long for an event. A release while the loop
/// is busy stalls it: reading smaps, then refaulting every page of code that runs next, its
/// threads' too. Under 20,000 AMQP messages a second (the master's loop is their path) a release
/// came every 2 s, each one a stall that every message behind it waited out.
const QUIET_MS: u64 = 50;

/// When to release again: once the first workers are spawned (the startup code that set them up
/// is done), once the first pool is ready, then whenever the loop is quiet, the resident set has
/// grown back by `REGROWTH_BYTES` and the last release is `MIN_INTERVAL_MS` old.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trimmer {
    /// Startup: the first workers are being spawned.
    Starting,
    /// The first workers are booting; what started them has run.
    Booting,
    /// Released at `at`, leaving `resident` bytes.
    Released { at: Instant, resident: u64 },
}

impl Trimmer {
    /// Called once a loop iteration with how long its poll waited and the master's resident
    /// bytes; releases when due.
    pub fn tick(
        &mut self,
        started: bool,
        waited: Duration,
        resident: impl FnOnce() -> Option<u64>,
        now: Instant,
    ) {
        let due = match *self {
            Trimmer::Starting => true,
            Trimmer::Booting => started,
            Trimmer::Released {
                at,
                resident: after,
            } => {
                waited >= Duration::from_millis(QUIET_MS)
                    && now.duration_since(at) >= Duration::from_millis(MIN_INTERVAL_MS)
                    && resident().is_some_and(|r| r > after + REGROWTH_BYTES)
            }
        };
        if !due {
            return;
        }
        let began = Instant::now();
        if let Some(bytes) = release_clean_pages() {
            log::debug!(
                "event=released_clean_pages mapping_kb={} us={}",
                bytes >> 10,
                began.elapsed().as_micros()
            );
        }
        *self = match self {
            Trimmer::Starting => Trimmer::Booting,
            Trimmer::Booting | Trimmer::Released { .. } => Trimmer::Released {
                at: now,
                resident: crate::sys::resident_bytes(std::process::id() as i32).unwrap_or(0),
            },
        };
    }
}

/// Keeps the master's heap from holding freed memory: one arena for all its threads (it has a
/// handful, none allocation-heavy), and large buffers (a worker's 200 KB bootstrap) always in
/// their own mapping, returned to the kernel when freed, instead of glibc's growing thresholds.
pub fn limit_heap() {
    // SAFETY: mallopt only sets allocator parameters; called at startup before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
}

/// Drops clean read-only file-backed pages from the resident set; the bytes of mapping released,
/// or None when /proc cannot be read.
pub fn release_clean_pages() -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut released = 0;
    for mapping in clean_read_only_mappings(&smaps) {
        let (start, end) = mapping;
        // SAFETY: [start, end) is one of this process's own mappings, read-only (no thread can
        // write it without an mprotect, which the master never does after startup), backed by a
        // file, and without a single private page: MADV_DONTNEED only drops its page table
        // entries, and the next access maps the same bytes back from the file.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    Some(released)
}

/// (start, end) of each mapping in `smaps` that is read-only (`r--p`, `r-xp`), file-backed and
/// whose `Anonymous` (privately copied) size is 0 kB.
fn clean_read_only_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else {
            continue;
        };
        if !first.ends_with(':') && first.contains('-') {
            // start-end perms offset dev inode [path]
            current = None;
            let readonly = matches!(fields.get(1), Some(&"r--p") | Some(&"r-xp"));
            let file = fields.get(5).is_some_and(|p| p.starts_with('/'));
            if let (true, true, Some((start, end))) = (readonly, file, first.split_once('-')) {
                current = usize::from_str_radix(start, 16)
                    .ok()
                    .zip(usize::from_str_radix(end, 16).ok());
            }
        } else if *first == "Anonymous:"
            && let Some(range) = current.take()
            && fields.get(1) == Some(&"0")
        {
            found.push(range);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trimmer_releases_once_started_then_on_regrowth_when_quiet_at_most_every_interval() {
        let t0 = Instant::now();
        let busy = Duration::from_millis(1);
        let quiet = Duration::from_millis(QUIET_MS);
        let mut trimmer = Trimmer::Starting;
        trimmer.tick(false, busy, || Some(1 << 30), t0);
        assert_eq!(
            trimmer,
            Trimmer::Booting,
            "released once the first spawns are done"
        );
        trimmer.tick(false, quiet, || Some(1 << 30), t0);
        assert_eq!(trimmer, Trimmer::Booting, "not again while booting");
        trimmer.tick(true, busy, || None, t0);
        let Trimmer::Released { at, resident } = trimmer else {
            panic!("released once started")
        };
        assert_eq!(at, t0);
        let soon = t0 + Duration::from_millis(MIN_INTERVAL_MS - 1);
        trimmer.tick(true, quiet, || Some(resident + 10 * REGROWTH_BYTES), soon);
        assert_eq!(trimmer.at(), t0, "not again so soon");
        let later = t0 + Duration::from_millis(MIN_INTERVAL_MS);
        trimmer.tick(true, quiet, || Some(resident + REGROWTH_BYTES / 2), later);
        assert_eq!(trimmer.at(), t0, "not for a little growth");
        trimmer.tick(true, busy, || Some(resident + 2 * REGROWTH_BYTES), later);
        assert_eq!(trimmer.at(), t0, "not while the loop is busy");
        trimmer.tick(true, quiet, || Some(resident + 2 * REGROWTH_BYTES), later);
        assert_eq!(trimmer.at(), later, "grown back and quiet: released again");
    }

    impl Trimmer {
        fn at(&self) -> Instant {
            match self {
                Trimmer::Released { at, .. } => *at,
                Trimmer::Starting | Trimmer::Booting => panic!("starting"),
            }
        }
    }

    /// Resident kB of this process's clean read-only file mappings.
    fn clean_resident_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let ranges = clean_read_only_mappings(&smaps);
        let mut kb = 0;
        let mut counting = false;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.first() {
                Some(f) if !f.ends_with(':') && f.contains('-') => {
                    let (s, e) = f.split_once('-').unwrap();
                    let range = (
                        usize::from_str_radix(s, 16).unwrap(),
                        usize::from_str_radix(e, 16).unwrap(),
                    );
                    counting = ranges.contains(&range);
                }
                Some(&"Rss:") if counting => kb += fields[1].parse::<u64>().unwrap(),
                _ => {}
            }
        }
        kb
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_chosen() {
        let smaps = "\
55e0-55f0 r--p 00000000 fe:00 1 /usr/bin/hurricane
Rss:                 872 kB
Anonymous:             0 kB
55f0-5600 r-xp 00205000 fe:00 1 /usr/bin/hurricane
Anonymous:             0 kB
5600-5610 r--p 007bb000 fe:00 1 /usr/bin/hurricane
Anonymous:           184 kB
5610-5620 rw-p 007e8000 fe:00 1 /usr/bin/hurricane
Anonymous:            12 kB
5620-5630 rw-p 00000000 00:00 0 [heap]
Anonymous:           212 kB
7ff0-7ff1 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7ff2-7ff3 r--p 00000000 00:00 0
Anonymous:             0 kB
";
        assert_eq!(
            clean_read_only_mappings(smaps),
            vec![(0x55e0, 0x55f0), (0x55f0, 0x5600)],
            "the relocated (dirty) read-only part, writable, anonymous and kernel mappings stay"
        );
    }

    #[test]
    fn clean_pages_leave_the_resident_set_and_running_code_comes_back() {
        let before = clean_resident_kb();
        let released = release_clean_pages().expect("/proc/self/smaps is readable");
        let after = clean_resident_kb();
        assert!(released > 0);
        assert!(after < before, "clean resident {before} kB -> {after} kB");
        // Still running the same code: formatting, allocation and /proc reads all work.
        let rss = crate::sys::resident_bytes(std::process::id() as i32).unwrap();
        assert!(format!("{rss}").parse::<u64>().unwrap() > 0);
    }
}
