//! `posthorn manpages DIR` (hidden): writes the manual pages and the shell
//! completions that the package installs, in the layout it installs them:
//!
//! - `DIR/man8/posthorn.8` and one `posthorn-SUBCOMMAND.8` per native
//!   subcommand, generated from the clap definitions (`clap_mangen`), so
//!   an option added to the CLI is documented by the same change;
//! - `DIR/man5/posthorn.toml.5`: every key of the configuration file, from
//!   `config::keys()`, with its defaults for each role (rendered by
//!   `postconf`'s own `settings`), its Postfix name (`POSTFIX_NAMES`) and
//!   its Exim equivalent; the words are in `keys`;
//! - `DIR/man1/posthorn-NAME.1` for the compatibility names, hand-written
//!   in `docs/man/` (their options are parsed by hand, so there is no
//!   definition to generate them from) and built into the binary, so that
//!   the command works from an installed binary as well as from the tree;
//! - `DIR/completions/posthorn.bash` and `DIR/completions/_posthorn` (zsh),
//!   from the clap definitions (`clap_complete`).
//!
//! Pages are named `posthorn-sendmail.1`, not `sendmail.1`: those names
//! belong to other packages (Debian forbids shipping them twice).

mod keys;

use super::{Cli, exit};
use crate::config::{Config, Role};
use clap::CommandFactory;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};
use std::path::{Path, PathBuf};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An empty `.TH` date argument, quoted.
const NO_DATE: &str = "\"\"";

/// The hand-written pages, with `@VERSION@` where the version goes.
const COMPAT_PAGES: [(&str, &str); 11] = [
    ("posthorn-sendmail.1", include_str!("../../../docs/man/posthorn-sendmail.1")),
    ("posthorn-newaliases.1", include_str!("../../../docs/man/posthorn-newaliases.1")),
    ("posthorn-mailq.1", include_str!("../../../docs/man/posthorn-mailq.1")),
    ("posthorn-postqueue.1", include_str!("../../../docs/man/posthorn-postqueue.1")),
    ("posthorn-postsuper.1", include_str!("../../../docs/man/posthorn-postsuper.1")),
    ("posthorn-postcat.1", include_str!("../../../docs/man/posthorn-postcat.1")),
    ("posthorn-postconf.1", include_str!("../../../docs/man/posthorn-postconf.1")),
    ("posthorn-postmap.1", include_str!("../../../docs/man/posthorn-postmap.1")),
    ("posthorn-postfix.1", include_str!("../../../docs/man/posthorn-postfix.1")),
    ("posthorn-exim.1", include_str!("../../../docs/man/posthorn-exim.1")),
    ("posthorn-exiqgrep.1", include_str!("../../../docs/man/posthorn-exiqgrep.1")),
];

/// Entry point: writes every file under `dir`, creating the directories.
pub(crate) fn main(dir: &Path) -> u8 {
    for (path, content) in files() {
        let path = dir.join(path);
        let written =
            path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, content));
        if let Err(e) = written {
            eprintln!("posthorn manpages: cannot write {}: {}", path.display(), crate::message::outcome::strerror(&e));
            return exit::CANTCREAT;
        }
    }
    exit::OK
}

/// Every file, as a path relative to DIR and its contents.
fn files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = command_pages();
    files.push(("man5/posthorn.toml.5".into(), config_page().into_bytes()));
    for (name, source) in COMPAT_PAGES {
        files.push((Path::new("man1").join(name), source.replace("@VERSION@", VERSION).into_bytes()));
    }
    files.push(("completions/posthorn.bash".into(), completion(clap_complete::Shell::Bash)));
    files.push(("completions/_posthorn".into(), completion(clap_complete::Shell::Zsh)));
    files
}

fn source() -> String {
    format!("posthorn {VERSION}")
}

/// `posthorn.8` and a page for every visible subcommand, nested ones
/// (`posthorn-queue-list.8`) included.
fn command_pages() -> Vec<(PathBuf, Vec<u8>)> {
    // `help` has no page of its own; `posthorn sendmail` is documented by
    // posthorn-sendmail(1), whose options it takes (a posthorn-sendmail(8)
    // beside it would say less), and listed under COMPATIBILITY NAMES.
    let mut cmd =
        Cli::command().disable_help_subcommand(true).mut_subcommand("sendmail", |sendmail| sendmail.hide(true));
    cmd.build();
    let mut pages = vec![(PathBuf::from("man8/posthorn.8"), main_page(cmd.clone()))];
    subcommand_pages(&cmd, &mut pages);
    pages
}

fn subcommand_pages(cmd: &clap::Command, pages: &mut Vec<(PathBuf, Vec<u8>)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
        let mut page = Vec::new();
        man(sub.clone()).render(&mut page).expect("rendering to memory");
        pages.push((Path::new("man8").join(format!("{name}.8")), page));
        subcommand_pages(sub, pages);
    }
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    // No date, so that a build is reproducible; `""` keeps .TH's argument
    // positions (an empty string would be dropped).
    clap_mangen::Man::new(cmd).section("8").date(NO_DATE).source(source()).manual("posthorn manual")
}

/// posthorn(8): clap's sections, then what the CLI definitions cannot say.
fn main_page(cmd: clap::Command) -> Vec<u8> {
    let man = man(cmd);
    let mut page = Vec::new();
    let render = |page: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(page)?;
        man.render_name_section(page)?;
        man.render_synopsis_section(page)?;
        man.render_description_section(page)?;
        man.render_options_section(page)?;
        man.render_subcommands_section(page)?;
        page.extend(main_page_sections().render().into_bytes());
        man.render_version_section(page)
    };
    render(&mut page).expect("rendering to memory");
    page
}

/// The compatibility names, files, environment and exit status of posthorn(8).
fn main_page_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["COMPATIBILITY NAMES"]);
    r.text([roman(
        "The same binary answers, by the name it is called with (a symlink: posthorn install-links DIR makes them) \
         or as posthorn NAME ARGS, to the commands operators already type. Each has its page:",
    )]);
    for (name, source) in COMPAT_PAGES {
        let page = name.trim_end_matches(".1");
        r.control("TP", []);
        r.text([bold(names_of(source).join(", "))]);
        r.text([bold(page), roman("(1)")]);
    }
    r.control("SH", ["FILES"]);
    tagged(&mut r, [italic(crate::config::DEFAULT_PATH)], "The configuration; see posthorn.toml(5).");
    tagged(
        &mut r,
        [italic("/var/spool/posthorn")],
        "The spool: the queue, the maildrop, the control sockets and the audit log.",
    );
    r.control("SH", ["ENVIRONMENT"]);
    tagged(
        &mut r,
        [bold("POSTHORN_CONFIG")],
        "The configuration file when -c is not given. Without either, /etc/posthorn/posthorn.toml, and when that \
         does not exist, a built-in satellite on 127.0.0.1:2525 with its spool in ./posthorn-spool.",
    );
    r.control("SH", ["EXIT STATUS"]);
    r.text([roman(
        "0 on success; 1 when posthorn check finds a problem or a command fails; the sysexits(3) codes otherwise: \
         64 usage, 69 unavailable, 73 cannot create, 75 temporary failure, 77 permission denied, \
         78 configuration error. posthorn check-client exits 0 when the client would be accepted, 1 when a \
         check would refuse it, 2 on a usage or configuration error.",
    )]);
    r.control("SH", ["SEE ALSO"]);
    let mut refs = vec![bold("posthorn.toml"), roman("(5)")];
    for (name, _) in COMPAT_PAGES {
        refs.extend([roman(", "), bold(name.trim_end_matches(".1")), roman("(1)")]);
    }
    r.text(refs);
    r
}

/// `.TP` with `tag`, then `text`.
fn tagged<const N: usize>(r: &mut Roff, tag: [Inline; N], text: &str) {
    r.control("TP", []);
    r.text(tag);
    r.text([roman(text)]);
}

/// The names a hand-written page documents: its NAME line up to `\-`.
fn names_of(source: &str) -> Vec<&str> {
    let mut lines = source.lines().skip_while(|l| *l != ".SH NAME").skip(1);
    let line = lines.next().unwrap_or_default();
    let names = line.split(" \\- ").next().unwrap_or_default();
    names.split(',').map(str::trim).filter(|n| !n.is_empty()).collect()
}

/// The defaults of one role, as `postconf -d` prints them.
fn defaults(role: Role) -> Vec<(String, String)> {
    let role = match role {
        Role::Hub => "hub",
        Role::Satellite => "satellite",
    };
    let config = Config::parse(&format!("role = \"{role}\"\n"), Path::new("(defaults)")).expect("role defaults parse");
    super::postconf::settings(&config)
}

/// posthorn.toml(5).
fn config_page() -> String {
    let satellite = defaults(Role::Satellite);
    let hub = defaults(Role::Hub);
    let value = |rows: &[(String, String)], key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut r = Roff::new();
    r.control("TH", ["POSTHORN.TOML", "5", NO_DATE, &source(), "posthorn manual"]);
    r.control("SH", ["NAME"]);
    r.text([roman("posthorn.toml - configuration file of the posthorn mail transfer agent")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(crate::config::DEFAULT_PATH)]);
    config_description(&mut r);
    let mut section = None;
    for key in crate::config::keys() {
        let here = key.rsplit_once('.').map_or("", |(s, _)| s).to_string();
        if section.as_ref() != Some(&here) {
            let title = if here.is_empty() { "TOP-LEVEL KEYS".to_string() } else { format!("[{here}]") };
            r.control("SH", [title.as_str()]);
            let intro = keys::SECTIONS.iter().find(|(s, _)| *s == here).map_or("", |(_, t)| *t);
            r.text([roman(intro)]);
            section = Some(here);
        }
        let doc = keys::find(&key);
        r.control("TP", []);
        r.text([bold(&key)]);
        r.text([roman(doc.map_or("", |d| d.text))]);
        r.control("br", []);
        let default = match doc.and_then(|d| d.default) {
            Some(words) => words.to_string(),
            None => default_text(value(&satellite, &key), value(&hub, &key)),
        };
        r.text([roman("Default: "), roman(default)]);
        let postfix = keys::postfix_names(&key);
        if !postfix.is_empty() {
            r.control("br", []);
            r.text([roman("Postfix: "), bold(postfix.join(", "))]);
        }
        if let Some(compare) = doc.map(|d| d.compare).filter(|c| !c.is_empty()) {
            r.control("br", []);
            r.text([roman("Postfix, compare: "), roman(compare)]);
        }
        if let Some(exim) = doc.map(|d| d.exim).filter(|e| !e.is_empty()) {
            r.control("br", []);
            r.text([roman("Exim: "), roman(exim)]);
        }
    }
    config_examples(&mut r);
    r.control("SH", ["FILES"]);
    tagged(&mut r, [italic(crate::config::DEFAULT_PATH)], "The configuration file.");
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("posthorn"),
        roman("(8), "),
        bold("posthorn-postconf"),
        roman("(1), "),
        bold("postconf"),
        roman("(5), "),
        bold("virtual"),
        roman("(5), "),
        bold("aliases"),
        roman("(5)"),
    ]);
    r.render()
}

/// "52428800", or "100 (satellite), 500 (hub)" when the roles differ.
fn default_text(satellite: Option<String>, hub: Option<String>) -> String {
    let shown = |v: Option<String>| match v.as_deref() {
        None | Some("") => "unset".to_string(),
        Some(v) => v.to_string(),
    };
    if satellite == hub { shown(satellite) } else { format!("{} (satellite), {} (hub)", shown(satellite), shown(hub)) }
}

fn config_description(r: &mut Roff) {
    r.control("SH", ["DESCRIPTION"]);
    for paragraph in [
        "posthorn reads one TOML file. The role key picks the defaults (satellite or hub) and every other key can \
         be set. A file that does not load is refused with the file, the line and the key \
         (/etc/posthorn/posthorn.toml:3: smtp.max_recipients: invalid type ...); unknown keys are errors.",
        "Durations are written 30s, 5m, 1h, 2d or 1w, or as a number of seconds; sizes 512k, 50M or 1G, or as a \
         number of bytes. Lists are TOML arrays of strings. Tables are written type:path (hash:/etc/postfix/virtual); \
         hash: and texthash: both read the text file.",
        "Commands find the file through -c PATH, then the POSTHORN_CONFIG environment variable, then \
         /etc/posthorn/posthorn.toml. postconf prints every key with the value in force, and postconf -d the \
         defaults of the file's role; the defaults below are what postconf -d prints.",
        "SIGHUP, posthorn reload or postfix reload re-reads the file and the tables without dropping connections \
         or queued mail. A reload that cannot be applied whole (a new listen address in use, a port below 1024 once \
         root is given up, a changed spool or user) is refused with the key named, and the running configuration \
         stays.",
        "Under each key: its default, the Postfix parameter with the same meaning (postconf answers to that name \
         too), a Postfix parameter that looks alike but differs, and the Exim option that does the same job.",
    ] {
        r.control("PP", []);
        r.text([roman(paragraph)]);
    }
}

fn config_examples(r: &mut Roff) {
    r.control("SH", ["EXAMPLES"]);
    r.text([roman("A satellite that relays everything to two hubs, verifying their certificates:")]);
    example(
        r,
        &[
            "role = \"satellite\"",
            "myorigin = \"example.org\"",
            "",
            "[relay]",
            "smarthosts = [\"mail1.example.org:25\", \"mail2.example.org:25\"]",
            "tls = \"verify\"",
        ],
    );
    r.control("PP", []);
    r.text([roman("A hub that takes mail from the fleet, rewrites it and delivers by MX and to Maildirs:")]);
    example(
        r,
        &[
            "role = \"hub\"",
            "hostname = \"mail1.example.org\"",
            "",
            "[access]",
            "trusted_networks = [\"10.0.0.0/8\"]",
            "local_domains = [\"mail.example.org\"]",
            "",
            "[rewrite]",
            "virtual_alias_maps = [\"hash:/etc/postfix/virtual\"]",
            "",
            "[tls]",
            "cert = \"/etc/posthorn/cert.pem\"",
            "key = \"/etc/posthorn/key.pem\"",
        ],
    );
}

/// Lines shown as they are, in a literal block.
fn example(r: &mut Roff, lines: &[&str]) {
    r.control("PP", []);
    r.control("RS", ["4"]);
    r.control("nf", []);
    for line in lines {
        // An empty input line is a warning in roff; `.sp` is the blank line.
        if line.is_empty() {
            r.control("sp", [])
        } else {
            r.text([roman(*line)])
        };
    }
    r.control("fi", []);
    r.control("RE", []);
}

/// The completion script for `shell`. clap_complete offers hidden
/// subcommands too, so they are left out of the command it is given.
fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let full = Cli::command();
    let mut cmd = clap::Command::new("posthorn")
        .version(VERSION)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "posthorn", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compat_name_has_a_page() {
        let documented: Vec<&str> = COMPAT_PAGES.iter().flat_map(|(_, source)| names_of(source)).collect();
        for name in super::super::COMPAT_NAMES {
            assert!(documented.contains(&name), "{name} is in no NAME section of docs/man/");
        }
    }

    #[test]
    fn pages_carry_the_version_and_no_placeholder() {
        for (path, content) in files() {
            let text = String::from_utf8(content).unwrap();
            assert!(!text.contains("@VERSION@"), "{}", path.display());
            if path.starts_with("man1") || path.starts_with("man5") || path.starts_with("man8") {
                assert!(text.contains(&format!("posthorn {VERSION}")), "{}", path.display());
            }
        }
    }

    #[test]
    fn defaults_per_role() {
        assert_eq!(default_text(Some("100".into()), Some("500".into())), "100 (satellite), 500 (hub)");
        assert_eq!(default_text(Some("5d".into()), Some("5d".into())), "5d");
        assert_eq!(default_text(Some(String::new()), Some(String::new())), "unset");
    }
}
