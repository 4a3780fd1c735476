//! `posthorn import postfix|exim [DIR]`: the migration path. Reads an
//! existing Postfix (`main.cf`, `master.cf`) or Debian Exim
//! (`update-exim4.conf.conf`, `/etc/mailname`) configuration and writes the
//! equivalent `posthorn.toml`, every key commented with the line it came
//! from.
//!
//! Nothing is guessed silently: every setting that cannot be carried over
//! is printed on stderr as `FILE:LINE: NAME: not carried over: WHY`, and a
//! setting whose meaning changes on the way says so the same way. Map files
//! stay where they are: posthorn reads the text source of `hash:` tables
//! itself (see `route::table`), so `hash:/etc/postfix/virtual` is carried as
//! it is. The result is loaded with posthorn's own configuration loader and
//! its tables opened before anything is written, so a file that would not
//! start the daemon is never left behind.
//!
//! - `mod.rs`: the command, the commented TOML writer ([`Output`]), checking
//!   and writing the file;
//! - `postfix`: `main.cf` (continuations, `$name` expansion, postconf's
//!   defaults) and `master.cf` (listeners, the content filter's services);
//! - `exim`: Debian's `update-exim4.conf.conf`.

mod exim;
mod postfix;

use super::exit;
use crate::config::Config;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which MTA the configuration comes from.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Source {
    Postfix,
    Exim,
}

/// `posthorn import SOURCE [DIR] [--dry-run] [-o FILE] [--force]`.
#[derive(Args)]
pub(crate) struct Options {
    /// The MTA whose configuration is read
    #[arg(value_enum)]
    source: Source,
    /// Its configuration directory (default: /etc/postfix, /etc/exim4)
    dir: Option<PathBuf>,
    /// Print the TOML on stdout instead of writing it
    #[arg(long)]
    dry_run: bool,
    /// Where to write it (default: the configuration path: -c, $POSTHORN_CONFIG,
    /// /etc/posthorn/posthorn.toml)
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Replace an existing file
    #[arg(long)]
    force: bool,
}

/// What an importer hands back: the TOML to write and the settings it could
/// not carry over, already worded as `FILE:LINE: NAME: ...`.
pub(crate) struct Imported {
    pub(crate) output: Output,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn main(explicit: Option<&Path>, opts: Options) -> u8 {
    let prog = "posthorn import";
    let imported = match opts.source {
        Source::Postfix => postfix::import(opts.dir.as_deref().unwrap_or(Path::new("/etc/postfix"))),
        Source::Exim => exim::import(opts.dir.as_deref().unwrap_or(Path::new("/etc/exim4"))),
    };
    let mut imported = match imported {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{prog}: fatal: {e}");
            return exit::CONFIG;
        }
    };
    let target = opts
        .output
        .or_else(|| explicit.map(Path::to_path_buf))
        .or_else(|| std::env::var_os("POSTHORN_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    let text = imported.output.render();
    // The file must load as the daemon will load it; its tables must open.
    match Config::parse(&text, &target) {
        Ok(config) => {
            if let Err(e) = crate::route::router::Router::from_config(&config) {
                imported.notes.push(format!("{}: the tables do not load as they are: {e}", target.display()));
            }
        }
        Err(e) => {
            eprintln!("{prog}: fatal: the imported configuration does not load: {e}");
            eprint!("{text}");
            return exit::SOFTWARE;
        }
    }
    for note in &imported.notes {
        eprintln!("{prog}: {note}");
    }
    if opts.dry_run {
        print!("{text}");
        return exit::OK;
    }
    match write_new(&target, &text, opts.force) {
        Ok(()) => {
            eprintln!(
                "{prog}: wrote {} ({} setting(s) not carried over, listed above); check it with `posthorn -c {} check`",
                target.display(),
                imported.notes.len(),
                target.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("{prog}: fatal: {e}");
            exit::CANTCREAT
        }
    }
}

/// Writes `text` to `target` through a temporary file and a rename, so
/// that a reader never sees half a configuration; refuses to replace an
/// existing file unless `force`.
fn write_new(target: &Path, text: &str, force: bool) -> Result<(), String> {
    let shown = target.display();
    if !force && target.symlink_metadata().is_ok() {
        return Err(format!("{shown} exists; not replacing it without --force (or write elsewhere with -o FILE)"));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.import.{}", std::process::id()));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if force {
            std::fs::rename(&tmp, target)
        } else {
            // A link fails on an existing name: no replacing a file that
            // appeared meanwhile.
            std::fs::hard_link(&tmp, target).and_then(|()| std::fs::remove_file(&tmp))
        }
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {shown}: {}", crate::message::outcome::strerror(&e)));
    }
    Ok(())
}

/// One key of the output with the comment saying where it came from.
struct Entry {
    /// Dotted posthorn key: `relay.smarthosts`, `role`.
    key: String,
    value: toml::Value,
    /// `main.cf:12: relayhost = [mail.example.org]:587`.
    from: Vec<String>,
}

/// The posthorn configuration being built: keys in the order they were set
/// (sections in the order of their first key), each with its origin.
#[derive(Default)]
pub(crate) struct Output {
    /// Comment lines at the top: what was imported, the role and why.
    header: Vec<String>,
    entries: Vec<Entry>,
}

impl Output {
    /// Adds a comment line at the top of the file.
    pub(crate) fn say(&mut self, line: impl Into<String>) {
        self.header.push(line.into());
    }

    /// Sets `key`, replacing an earlier value (whose origin is kept).
    pub(crate) fn set(&mut self, key: &str, value: impl Into<toml::Value>, from: impl Into<String>) {
        let value = value.into();
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.value = value;
                e.from.push(from.into());
            }
            None => self.entries.push(Entry { key: key.into(), value, from: vec![from.into()] }),
        }
    }

    /// Appends `items` to the list `key`, leaving out those already there.
    pub(crate) fn extend(&mut self, key: &str, items: &[String], from: impl Into<String>) {
        let new: Vec<toml::Value> = items.iter().map(|s| toml::Value::from(s.as_str())).collect();
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(Entry { value: toml::Value::Array(list), from: origins, .. }) => {
                for item in new {
                    if !list.contains(&item) {
                        list.push(item);
                    }
                }
                origins.push(from.into());
            }
            _ => self.set(key, toml::Value::Array(new), from),
        }
    }

    /// The value set for `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&toml::Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// The commented TOML text: header, top-level keys, then one table per
    /// section.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(&comment(line));
        }
        let section_of = |key: &str| key.split_once('.').map(|(s, _)| s.to_string());
        let mut sections: Vec<Option<String>> = vec![None];
        for e in &self.entries {
            let s = section_of(&e.key);
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
        for section in sections {
            if let Some(name) = &section {
                out.push_str(&format!("\n[{name}]\n"));
            } else {
                out.push('\n');
            }
            for e in self.entries.iter().filter(|e| section_of(&e.key) == section) {
                for from in &e.from {
                    out.push_str(&comment(from));
                }
                let name = e.key.split_once('.').map_or(e.key.as_str(), |(_, k)| k);
                out.push_str(&format!("{name} = {}\n", e.value));
            }
        }
        out
    }
}

/// `text` as comment lines (one `#` line per line of text).
fn comment(text: &str) -> String {
    text.lines().map(|l| if l.is_empty() { "#\n".to_string() } else { format!("# {l}\n") }).collect()
}

/// Reads a configuration file as text, the error naming it.
pub(crate) fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {}", path.display(), crate::message::outcome::strerror(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_commented_toml_by_section() {
        let mut out = Output::default();
        out.say("imported from /etc/postfix");
        out.set("role", "hub", "main.cf: no relayhost");
        out.extend("access.local_domains", &["example.org".into()], "main.cf:3: mydestination = example.org");
        out.set("hostname", "mx.example.org", "main.cf:1: myhostname = mx.example.org");
        out.extend("access.local_domains", &["example.org".into(), "localhost".into()], "main.cf:4: x");
        let text = out.render();
        assert!(
            text.starts_with("# imported from /etc/postfix\n\n# main.cf: no relayhost\nrole = \"hub\"\n"),
            "{text}"
        );
        assert!(text.contains("# main.cf:1: myhostname = mx.example.org\nhostname = \"mx.example.org\"\n"), "{text}");
        assert!(text.contains("[access]\n# main.cf:3: mydestination = example.org\n# main.cf:4: x\nlocal_domains = [\"example.org\", \"localhost\"]\n"), "{text}");
        let c = Config::parse(&text, Path::new("/x.toml")).unwrap();
        assert_eq!(c.access.local_domains, ["example.org", "localhost"]);
    }
}
