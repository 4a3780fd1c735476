//! `posthorn check` (and `postfix check`): the gate before `serve`, run by
//! systemd's `ExecStartPre` and the package's postinst. It answers one
//! question: would `serve` (or a `reload`) start with this configuration
//! on this host now? Exit 1 with one sentence per reason when it would
//! refuse; exit 0 otherwise, warnings included (`warning:` lines).
//!
//! It asks the daemon's own code rather than a copy of it: the files
//! (tables, certificate and key, users, DKIM keys) go through
//! `daemon::load`, the ports through `daemon::listeners::probe`, the
//! account through `privilege::account_for`, the spool's layout through
//! `privilege::check_layout`. When root would hand the daemon to its
//! account, the files are read in a child switched to that account
//! (`privilege::run_as`), as the daemon reads them after the switch.
//!
//! It changes nothing unless asked: `--fix` (`postfix set-permissions`)
//! creates the spool and repairs its owners and modes with the code the
//! daemon runs at start (`spool::fix`).

mod ports;
mod spool;

use crate::account::Account;
use crate::config::{Config, Role};
use crate::daemon::privilege;
use std::path::Path;

/// What a check found: `problems` fail the gate, the rest are told.
#[derive(Default)]
struct Report {
    problems: Vec<String>,
    warnings: Vec<String>,
    /// What `--fix` changed, and facts worth a line (a spool still to make).
    notes: Vec<String>,
}

pub(crate) fn main(explicit: Option<&Path>, fix: bool) -> u8 {
    let config = match Config::discover(explicit) {
        Ok(c) => c,
        Err(e) => {
            println!("posthorn check: {e}");
            return 1;
        }
    };
    let report = check(&config, fix);
    for p in &report.problems {
        println!("posthorn check: {p}");
    }
    for w in &report.warnings {
        println!("posthorn check: warning: {w}");
    }
    for n in &report.notes {
        println!("posthorn check: {n}");
    }
    if report.problems.is_empty() {
        let source = config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in".into());
        println!("posthorn check: configuration {source} and spool {} are in order", config.spool.display());
        super::exit::OK
    } else {
        1
    }
}

fn check(config: &Config, fix: bool) -> Report {
    let mut report = Report::default();
    // The account a daemon started by this user switches to (root only).
    let account = match privilege::account_for(config.user.as_deref()) {
        Ok(account) => account,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            None
        }
    };
    if fix {
        spool::fix(config, account.as_ref(), &mut report);
    }
    settings(config, &mut report);
    ports::check(config, &mut report);
    spool::inspect(config, account.as_ref(), &mut report);
    files(config, account.as_ref(), &mut report);
    report
}

/// What the configuration says, before any file is read.
fn settings(config: &Config, report: &mut Report) {
    if let Err(e) = crate::daemon::refusals(config) {
        report.problems.push(format!("{e:#}"));
    }
    if let (Some(filter), None) = (&config.filter.content_filter, config.filter.reinject_listen) {
        report.problems.push(format!(
            "filter.content_filter is {filter} but filter.reinject_listen is not set: what the filter sends back \
             arrives as new mail and is filtered again, in a loop"
        ));
    }
    // `serve` starts: local mail may go to Maildirs by a transport map,
    // and the rest waits in the queue until a smarthost is set.
    if config.role == Role::Satellite && config.relay.smarthosts.is_empty() {
        report
            .warnings
            .push("relay.smarthosts is empty: mail this satellite does not deliver itself waits in the queue".into());
    }
    report.warnings.extend(crate::daemon::warnings(config));
    report.warnings.extend(srs_secret(config));
}

/// The SRS secret is what keeps the hub from being an open forwarder of
/// bounces: anyone who can read it can mint addresses the hub will reverse,
/// and anyone who can write it can make them. Its reading by the account
/// is checked with the other files.
fn srs_secret(config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.srs.as_ref()?.secret;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o027 != 0).then(|| {
        format!(
            "srs.secret {}: mode {:04o} lets others read or change it; make it 0640 or tighter, owned by root and readable by the daemon's group",
            path.display(),
            mode & 0o7777
        )
    })
}

/// Reads every file the daemon reads, as the account that will read
/// them: in a child switched to `account` when there is one.
fn files(config: &Config, account: Option<&Account>, report: &mut Report) {
    let Some(account) = account else {
        report.problems.extend(readable(config, &crate::account::user_name(rustix::process::geteuid().as_raw())));
        return;
    };
    let lines = privilege::run_as(account, || {
        let mut out = Vec::new();
        // A reload reads the configuration again, as the account.
        let reread = match &config.source {
            Some(path) => match Config::load(path) {
                Ok(fresh) => fresh,
                Err(e) => {
                    out.push(format!(
                        "user {} cannot load the configuration: a reload would refuse: {e}",
                        account.name
                    ));
                    config.clone()
                }
            },
            None => config.clone(),
        };
        out.extend(readable(&reread, &account.name));
        out
    });
    match lines {
        Ok(lines) => report.problems.extend(lines),
        Err(e) => report.problems.push(format!("{e:#}")),
    }
}

/// Loads what `serve` loads from files, as this process is, and looks at
/// the Maildir root when mail can go to a Maildir.
fn readable(config: &Config, user: &str) -> Vec<String> {
    let mut out = Vec::new();
    let maildir = match crate::daemon::load(config) {
        Ok((router, _)) => router.delivers_to_maildir(),
        Err(failed) => {
            out.extend(failed.0.iter().map(|e| format!("{e:#}")));
            crate::route::router::Router::from_config(config).is_ok_and(|r| r.delivers_to_maildir())
        }
    };
    if maildir {
        out.extend(maildir_root(config, user));
    }
    out
}

/// Whether `user` (this process) can make Maildirs where
/// `deliver.maildir_root` puts them: the nearest directory on the way
/// that exists must be writable and searchable.
fn maildir_root(config: &Config, user: &str) -> Option<String> {
    let template = &config.deliver.maildir_root;
    let root = crate::deliver::maildir::fixed_root(template);
    let existing = root.ancestors().find(|dir| dir.exists())?;
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    let e = rustix::fs::access(existing, access).err()?;
    Some(format!(
        "deliver.maildir_root {template}: user {user} cannot make Maildirs in {}: {}",
        existing.display(),
        crate::message::outcome::strerror(&e.into())
    ))
}

#[cfg(test)]
mod tests {
    use crate::deliver::maildir::fixed_root;
    use std::path::Path;

    #[test]
    fn the_maildir_root_is_what_comes_before_the_first_placeholder() {
        assert_eq!(fixed_root("/var/mail/{domain}/{user}"), Path::new("/var/mail"));
        assert_eq!(fixed_root("/srv/vmail/d-{domain}/{user}/Maildir"), Path::new("/srv/vmail"));
        assert_eq!(fixed_root("/{user}"), Path::new("/"));
        assert_eq!(fixed_root("/srv/all/Maildir"), Path::new("/srv/all/Maildir"));
    }

    #[test]
    fn an_srs_secret_others_can_read_is_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("srs.secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "role = \"hub\"\n[access]\nlocal_domains = [\"hub.example\"]\n[srs]\ndomain = \"hub.example\"\nsecret = \"{}\"\n",
            secret.display()
        );
        let config = crate::config::Config::parse(&text, Path::new("posthorn.toml")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(super::srs_secret(&config), None);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = super::srs_secret(&config).unwrap();
        assert!(warning.contains("mode 0644 lets others read or change it"), "{warning}");
    }
}
