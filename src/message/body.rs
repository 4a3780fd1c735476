//! A message's bytes as a transport gets them: in memory, or, for a large
//! message, the spool's body file mapped read-only (issue 18, item 4).
//!
//! Reading each body whole into the heap made 200 concurrent 20 MB
//! deliveries cost 4 GB of memory. A mapping costs address space only;
//! its pages come from the page cache as they are read, and the SMTP
//! client gives back those it has sent (`release`), so the daemon's
//! resident memory stays flat however large the message.
//!
//! Bodies are never changed after their commit (docs/spool.md, rule 3), so
//! a mapping of one stays what was committed. Should someone truncate a
//! body file under a delivery, reading past the new end would raise
//! SIGBUS: the queue maps a file only once its length is the size its
//! envelope recorded, and only the spool's own account can write there.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

/// A message's bytes, cheap to clone; derefs to the bytes.
#[derive(Clone)]
pub(crate) enum Body {
    Memory(Arc<[u8]>),
    Mapped(Arc<Mapping>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Memory(b) => write!(f, "Body::Memory({} bytes)", b.len()),
            Body::Mapped(m) => write!(f, "Body::Mapped({} bytes)", m.len),
        }
    }
}

impl Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Memory(b) => b,
            Body::Mapped(m) => m.bytes(),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Memory(Arc::from(bytes))
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::Memory(Arc::from(bytes))
    }
}

impl Body {
    /// Maps `file`, whose length the caller has checked to be `len`
    /// against the envelope's record.
    pub(crate) fn map(file: &File, len: u64) -> io::Result<Body> {
        if len == 0 {
            return Ok(Body::from(Vec::new()));
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: a fresh read-only, shared mapping of a whole file, which
        // is not resized by anyone while mapped (see the module comment);
        // it is unmapped only when the `Mapping` is dropped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                file,
                0,
            )?
        };
        Ok(Body::Mapped(Arc::new(Mapping { ptr: ptr.cast(), len })))
    }

    /// Whether any octet has the high bit set. A mapped body is read a
    /// slice at a time and each slice's pages given back once read, so
    /// that scanning a large message does not make it all resident: before
    /// this, the scan ahead of each delivery held every page of every body
    /// in flight until the SMTP client had sent it (200 concurrent 20 MB
    /// messages: 374 MiB of file-backed RSS).
    pub(crate) fn has_8bit(&self) -> bool {
        const SLICE: usize = 1 << 20;
        let bytes: &[u8] = self;
        let mut start = 0;
        while start < bytes.len() {
            let end = (start + SLICE).min(bytes.len());
            let found = crate::message::downconvert::has_8bit(&bytes[start..end]);
            self.release(end);
            if found {
                return true;
            }
            start = end;
        }
        false
    }

    /// Tells the kernel the bytes before `upto` will not be read again
    /// soon: a mapped body gives back their pages (they are read again
    /// from the page cache should they be); a body in memory is left as
    /// it is.
    pub(crate) fn release(&self, upto: usize) {
        if let Body::Mapped(m) = self {
            m.release(upto);
        }
    }
}

/// A read-only mapping of a whole body file.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until dropped; sharing it
// between threads shares immutable bytes.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn release(&self, upto: usize) {
        let page = rustix::param::page_size();
        let upto = upto.min(self.len) / page * page;
        if upto == 0 {
            return;
        }
        // SAFETY: a page-aligned range inside our read-only shared
        // mapping; MADV_DONTNEED on it only drops the page table entries,
        // and a later read faults the same file bytes back in.
        let _ = unsafe { rustix::mm::madvise(self.ptr.cast(), upto, rustix::mm::Advice::LinuxDontNeed) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `Body::map` mapped, once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of the mapping that starts at `ptr`, from smaps.
    fn resident_kib(ptr: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", ptr as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.find_map(|l| l.strip_prefix("Rss:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    }

    #[test]
    fn scanning_a_mapped_body_for_8bit_leaves_it_unresident() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        let mut bytes = vec![b'a'; 8 << 20];
        std::fs::write(&path, &bytes).unwrap();
        let body = Body::map(&std::fs::File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        let Body::Mapped(m) = &body else { panic!("not mapped") };
        assert!(!body.has_8bit());
        assert!(resident_kib(m.ptr) < 2048, "{} KiB resident after the scan", resident_kib(m.ptr));
        // Found wherever it is, also in the last slice.
        *bytes.last_mut().unwrap() = 0xe9;
        std::fs::write(&path, &bytes).unwrap();
        let body = Body::map(&std::fs::File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        assert!(body.has_8bit());
        assert!(Body::from(&b"caf\xc3\xa9"[..]).has_8bit());
        assert!(!Body::from(&b"plain"[..]).has_8bit());
    }

    #[test]
    fn a_mapped_body_reads_as_its_file_and_after_release_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let body = Body::map(&File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        assert!(matches!(body, Body::Mapped(_)));
        assert_eq!(&body[..], &bytes[..]);
        body.release(200_000);
        assert_eq!(&body[..], &bytes[..], "released pages read back the same");
        let clone = body.clone();
        drop(body);
        assert_eq!(clone.len(), bytes.len());
        let empty = Body::map(&File::open(&path).unwrap(), 0).unwrap();
        assert!(empty.is_empty());
    }
}
