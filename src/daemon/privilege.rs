//! Giving up root: a daemon started as root binds its ports, hands the
//! spool to its own account and switches to it for good, as
//! docs/security.md describes (Postfix's `mail_owner`).
//!
//! The switch uses glibc's `setgroups`/`setgid`/`setuid`, which change the
//! credentials of every thread of the process (the kernel's calls change
//! only the calling thread's, and the runtime's threads already exist).
//! Afterwards the process checks that root cannot be taken back.
//!
//! The spool's ownership after the switch:
//! ```text
//! SPOOL/            user:group 0711  (others reach the sockets and maildrop)
//!   queue dirs      user:group 0700  and every file in them user:group
//!   maildrop/       user:group 3733  setgid: every drop gets the group, and
//!                                    `sendmail` makes it 0640, so the daemon
//!                                    reads drops it does not own
//!   control.sock    user:group 0600  root and the user only
//! ```

use crate::account::{Account, lookup};
use anyhow::{Context, bail};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Switches to the configured account when running as root; `None` when
/// nothing was switched (not root, no `user` in the built-in
/// configuration, or `user = "root"`). Call it once, after every privileged
/// port and socket is bound and before anything else is started.
pub(crate) fn drop_root(user: Option<&str>, spool: &Path) -> anyhow::Result<Option<Account>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let Some(name) = user else { return Ok(None) };
    if name == "root" {
        tracing::warn!("running as root: `user = \"root\"` is set");
        return Ok(None);
    }
    let Some(account) = lookup(name)? else {
        bail!(
            "user {name:?} (the `user` key, default posthorn) does not exist: create it \
             (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set `user` to an existing account"
        );
    };
    if account.uid == 0 {
        bail!("user {name:?} has uid 0: that is root under another name; set `user` to an unprivileged account");
    }
    hand_over(spool, &account).with_context(|| format!("giving the spool {} to {name}", spool.display()))?;
    switch(&account)?;
    Ok(Some(account))
}

/// Gives the spool to `account` (see the module comment for the layout).
/// Files already right are left alone, so a restart costs one `stat` per
/// queued file.
fn hand_over(spool: &Path, account: &Account) -> std::io::Result<()> {
    let own = |path: &Path| -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.uid() != account.uid || meta.gid() != account.gid {
            std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))?;
        }
        Ok(())
    };
    own(spool)?;
    for entry in std::fs::read_dir(spool)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name == "maildrop" {
            continue;
        }
        own(&path)?;
        if entry.file_type()?.is_dir() {
            for file in std::fs::read_dir(&path)? {
                own(&file?.path())?;
            }
        }
    }
    let maildrop = spool.join("maildrop");
    own(&maildrop)?;
    std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o3733))?;
    // Drops written before the switch keep their owner (the submitting
    // user, which the daemon reads from it) and get the group; any local
    // user writes here, so only regular files are touched, through their fds.
    crate::ingress::maildrop::claim(&maildrop, account.gid, &spool.join("corrupt"))
}

fn switch(account: &Account) -> anyhow::Result<()> {
    let gid: libc::gid_t = account.gid;
    // SAFETY: plain system calls on integers and a one-element array; glibc
    // applies each to every thread of the process.
    let failed =
        unsafe { libc::setgroups(1, &gid) != 0 || libc::setgid(account.gid) != 0 || libc::setuid(account.uid) != 0 };
    if failed {
        bail!("cannot switch to user {} (uid {}): {}", account.name, account.uid, std::io::Error::last_os_error());
    }
    // SAFETY: as above; this call must fail now.
    let back = unsafe { libc::setuid(0) } == 0;
    if back || rustix::process::getuid().as_raw() != account.uid || rustix::process::geteuid().as_raw() != account.uid {
        bail!("switching to user {} did not drop root", account.name);
    }
    Ok(())
}
