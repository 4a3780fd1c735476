//! User accounts from the system's user database, through NSS (`files`,
//! LDAP, sssd: whatever nsswitch.conf names), never by reading /etc/passwd:
//! the daemon's own account when it gives up root, and the login names of
//! local submitters and of the audit log. Uses nothing else in the crate.

use std::ffi::{CStr, CString};

/// Largest buffer offered to NSS for one entry; a larger one is an error.
const MAX_BUFFER: usize = 1 << 20;

/// One user account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// One account with its home directory and login shell, for local
/// delivery (`deliver::local`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) account: Account,
    pub(crate) home: std::path::PathBuf,
    pub(crate) shell: std::path::PathBuf,
}

/// NSS could not answer (a name with a NUL byte never reaches it).
#[derive(Debug, thiserror::Error)]
#[error("looking up user {user}: {source}")]
pub(crate) struct LookupError {
    user: String,
    source: std::io::Error,
}

/// The account named `name`; `None` when there is none.
pub(crate) fn lookup(name: &str) -> Result<Option<Account>, LookupError> {
    Ok(lookup_entry(name)?.map(|e| e.account))
}

/// The account named `name` with its home and shell; `None` when there is none.
pub(crate) fn lookup_entry(name: &str) -> Result<Option<Entry>, LookupError> {
    let failed = |source| LookupError { user: name.to_string(), source };
    let c_name = CString::new(name).map_err(|_| failed(std::io::Error::other("a user name has no NUL byte")))?;
    query(|pwd, buf, found| {
        // SAFETY: every pointer is valid for the call; see `query`.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf.as_mut_ptr().cast(), buf.len(), found) }
    })
    .map_err(failed)
}

/// The account with user id `uid`; `None` when there is none.
pub(crate) fn lookup_uid(uid: u32) -> Result<Option<Account>, LookupError> {
    query(|pwd, buf, found| {
        // SAFETY: every pointer is valid for the call; see `query`.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr().cast(), buf.len(), found) }
    })
    .map(|e| e.map(|e| e.account))
    .map_err(|source| LookupError { user: format!("with uid {uid}"), source })
}

/// The login name for `uid`, or the number when it has none (or NSS fails:
/// a log line or trace header still needs something to show).
pub(crate) fn user_name(uid: u32) -> String {
    lookup_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |account| account.name)
}

/// Runs one `getpw*_r` call, growing the buffer while it is too small.
fn query(
    call: impl Fn(&mut libc::passwd, &mut [u8], &mut *mut libc::passwd) -> libc::c_int,
) -> std::io::Result<Option<Entry>> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // `buf` outlives the strings `pwd` points into, and they are only
        // read below, before `buf` is resized or dropped.
        match call(&mut pwd, &mut buf, &mut found) {
            0 if found.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success `pw_name` is a NUL-terminated string in `buf`.
                let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
                let path = |p: *const libc::c_char| {
                    use std::os::unix::ffi::OsStrExt;
                    if p.is_null() {
                        return std::path::PathBuf::new();
                    }
                    // SAFETY: as `pw_name`, a NUL-terminated string in `buf`.
                    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
                    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
                };
                let (home, shell) = (path(pwd.pw_dir), path(pwd.pw_shell));
                return Ok(Some(Entry { account: Account { name, uid: pwd.pw_uid, gid: pwd.pw_gid }, home, shell }));
            }
            libc::ERANGE if buf.len() < MAX_BUFFER => buf.resize(buf.len() * 4, 0),
            err => return Err(std::io::Error::from_raw_os_error(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users() {
        let root = lookup("root").unwrap().expect("every system has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("no-such-user-posthorn-test").unwrap(), None);
        assert!(lookup("ro\0ot").unwrap_err().to_string().contains("NUL"));
    }

    #[test]
    fn looks_up_user_ids() {
        assert_eq!(lookup_uid(0).unwrap().map(|a| a.name).as_deref(), Some("root"));
        assert_eq!(user_name(0), "root");
        // An id no account has shows as the number.
        let unused = (4_000_000_000..).find(|&uid| lookup_uid(uid).unwrap().is_none()).unwrap();
        assert_eq!(user_name(unused), unused.to_string());
        // Whoever runs the tests round-trips through both lookups.
        let me = rustix::process::getuid().as_raw();
        if let Some(account) = lookup_uid(me).unwrap() {
            assert_eq!(lookup(&account.name).unwrap().map(|a| a.uid), Some(me));
        }
    }
}
