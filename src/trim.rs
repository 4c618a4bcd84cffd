//! Hands back the pages of the master's own code that only startup ran.
//!
//! Why: parsing the command line, building the bootstrap and starting the first pool run once, but
//! the kernel keeps their code mapped (and 64 KiB around every page touched) for the life of the
//! process: about 4 MB of the master's 5 MB of resident memory, counted against the pod like the
//! workers' (with --preload the whole server is ~60 MB, so it shows). Once the first pool is ready,
//! MADV_DONTNEED on the executable's code mapping drops those mappings; code that runs again is
//! mapped back from the page cache at its next use, a minor fault. The mapping is read-only and
//! backed by the binary's file, so nothing can be lost.

use std::path::Path;

/// Drops the master's code pages from its resident set; the bytes of mapping released, or None
/// when /proc cannot tell where the code is.
pub fn release_startup_code() -> Option<usize> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut released = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] != "r-xp" || Path::new(fields[5]) != exe {
            continue;
        }
        let (start, end) = fields[0].split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        // SAFETY: [start, end) is this process's own code, a read-only private mapping of the
        // executable's file that nothing writes: MADV_DONTNEED only drops its page table entries,
        // and the next instruction fetched from it maps the same bytes back from the file.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    Some(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kB of this process's code mapping, from /proc/self/smaps.
    fn code_resident_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_code = false;
        let mut kb = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                in_code = fields.len() >= 6 && fields[1] == "r-xp" && Path::new(fields[5]) == exe;
            } else if in_code && fields.first() == Some(&"Rss:") {
                kb += fields[1].parse::<u64>().unwrap();
            }
        }
        kb
    }

    #[test]
    fn startup_code_leaves_the_resident_set_and_running_code_comes_back() {
        let before = code_resident_kb();
        let released = release_startup_code().expect("/proc/self/maps names the executable");
        let after = code_resident_kb();
        assert!(released > 0);
        assert!(after < before, "code resident {before} kB -> {after} kB");
        // Still running the same code: formatting, allocation and /proc reads all work.
        let rss = crate::sys::resident_bytes(std::process::id() as i32).unwrap();
        assert!(format!("{rss}").parse::<u64>().unwrap() > 0);
    }
}
