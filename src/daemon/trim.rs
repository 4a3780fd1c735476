//! Giving back the start-up code's pages once the daemon is ready (issue 18:
//! an idle satellite in at most 8 MiB).
//!
//! Most of an idle daemon's resident memory is not heap but its own binary:
//! parsing the configuration, loading tables, recovering the spool and
//! binding run once, and every page of code they touch stays mapped (the
//! kernel also maps the neighbours of each page it faults in, 64 KiB at a
//! time). Measured on a release build: 7 MiB of the 10 MiB text and 1.3 MiB
//! of read-only data resident one second after `ready`, against 1.4 MiB of
//! heap and stacks.
//!
//! After `ready`, `start_up_pages` drops the page-table entries of the
//! binary's read-only mappings (`MADV_DONTNEED`). The bytes stay in the page
//! cache; what the daemon runs next faults back in from there (a minor
//! fault, no I/O while the file is cached), and what it never runs again is
//! left to the kernel to reclaim like any unmapped cache page.
//!
//! Only a mapping of the executable itself that is not writable and holds
//! no anonymous page qualifies: on a private mapping `MADV_DONTNEED` throws
//! away copied-on-write pages, so the relocated read-only data (RELRO,
//! written by the loader before `main`, then made read-only) is never
//! touched, which the `Anonymous:` count of `/proc/self/smaps` tells.

use std::path::PathBuf;

/// One mapping of the executable that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// Drops the resident pages of the executable's read-only, unmodified
/// mappings; returns the bytes of address space advised. Failures (no
/// `/proc`, an old kernel) leave everything as it was.
pub(crate) fn start_up_pages() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mut advised = 0;
    for m in droppable(&smaps, &exe) {
        // SAFETY: `m` is a whole private, non-writable mapping of the
        // executable with no anonymous (copied) page, so its contents are
        // exactly the file's: dropping its page-table entries loses
        // nothing, and the next access faults the same bytes back in. The
        // binary is never unmapped while the process runs.
        let done = unsafe { rustix::mm::madvise(m.start as *mut _, m.len, rustix::mm::Advice::LinuxDontNeed) };
        if done.is_ok() {
            advised += m.len;
        }
    }
    advised
}

/// The mappings of `exe` in `smaps` (the text of `/proc/self/smaps`) that
/// are readable, not writable, private, and hold no anonymous page.
fn droppable(smaps: &str, exe: &std::path::Path) -> Vec<Droppable> {
    let mut out = Vec::new();
    let mut current: Option<Droppable> = None;
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            current = header.filter(|(_, perms, path)| read_only_private(perms) && *path == exe).map(|(m, _, _)| m);
        } else if let Some(rest) = line.strip_prefix("Anonymous:")
            && let Some(m) = current.take()
            && rest.trim() == "0 kB"
        {
            out.push(m);
        }
    }
    out
}

/// `r-xp` or `r--p`: readable, never writable, private.
fn read_only_private(perms: &str) -> bool {
    let p = perms.as_bytes();
    p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p'
}

/// A header line of smaps (`start-end perms offset dev inode path`): the
/// range, the permissions and the path; `Some(None)` for a header of a
/// mapping without a path; `None` for a field line.
#[allow(clippy::type_complexity)]
fn mapping_header(line: &str) -> Option<Option<(Droppable, &str, PathBuf)>> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    // The path is the rest of the line, and may hold spaces.
    let path = line.splitn(6, |c: char| c.is_ascii_whitespace()).nth(5).map(str::trim_start).unwrap_or("");
    if path.is_empty() || end <= start {
        return Some(None);
    }
    Some(Some((Droppable { start, len: end - start }, perms, PathBuf::from(path))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 42                         /usr/sbin/posthorn
Size:               1024 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0a0100000-55d0a0a00000 r-xp 00100000 fe:00 42                         /usr/sbin/posthorn
Size:               9216 kB
Anonymous:             0 kB
55d0a0a00000-55d0a0a40000 r--p 00a00000 fe:00 42                         /usr/sbin/posthorn
Anonymous:           256 kB
55d0a0a40000-55d0a0a44000 rw-p 00a40000 fe:00 42                         /usr/sbin/posthorn
Anonymous:             0 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0                          [heap]
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7                          /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000201000 rw-p 00000000 00:00 0 
Anonymous:             4 kB
";

    #[test]
    fn only_the_executables_clean_read_only_mappings() {
        let found = droppable(SMAPS, Path::new("/usr/sbin/posthorn"));
        assert_eq!(
            found,
            vec![
                Droppable { start: 0x55d0a0000000, len: 0x100000 },
                Droppable { start: 0x55d0a0100000, len: 0x900000 },
            ]
        );
        assert!(droppable(SMAPS, Path::new("/usr/sbin/other")).is_empty());
    }

    #[test]
    fn the_running_binary_still_runs_after_its_pages_are_dropped() {
        let before = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(!droppable(&before, &exe).is_empty(), "the test binary has read-only mappings");
        assert!(start_up_pages() > 0);
        // Code and read-only data fault back in.
        let table: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        assert_eq!(table[99], "63");
        assert_eq!(droppable(SMAPS, Path::new("/usr/sbin/posthorn")).len(), 2);
    }
}
