//! End-to-end: `posthorn manpages DIR`, as the package build runs it, and
//! the files it writes read by the tools that read them on an installed
//! system: man(1), bash and zsh.
//!
//! Scenarios:
//! 1. The layout the package installs: man1 (one page per compatibility
//!    command, named posthorn-NAME.1, never a name owned by another
//!    package), man5/posthorn.toml.5, man8/posthorn.8 with the subcommand
//!    pages, completions/posthorn.bash and completions/_posthorn.
//! 2. `man --warnings -l` renders every page at 80 columns without a
//!    warning.
//! 3. posthorn.toml(5) has an entry for every key `postconf` lists, with
//!    the default `postconf -d` prints for a satellite and for a hub, and
//!    the Postfix name `postconf` answers to.
//! 4. Every option letter in the usage message a compatibility command
//!    prints is documented on its page.
//! 5. bash: sourcing the completion registers it, and it completes
//!    subcommands, verbs and options (the hidden `manpages` is not
//!    offered); zsh: the file parses, and compinit registers it.

mod harness;

use harness::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes the pages into a new directory.
fn generate() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("stage");
    let mut cmd = Command::new(BIN);
    cmd.arg("manpages").arg(&out_dir);
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "posthorn manpages: {}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "posthorn manpages is silent on success");
    (dir, out_dir)
}

fn need(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
    assert!(found.status.success(), "{tool} is not installed (.ci/run installs it)");
}

/// `man -l PAGE` with `width` columns, no hyphenation, no justification.
fn man(page: &Path, width: u32, warnings: bool) -> Output {
    need("man");
    let mut cmd = Command::new("man");
    if warnings {
        cmd.arg("--warnings");
    }
    cmd.args(["--nh", "--nj", "-l"]).arg(page).env("MANWIDTH", width.to_string()).env("LC_ALL", "C.UTF-8");
    cmd.env_remove("MANPAGER").env_remove("PAGER").env_remove("MAN_KEEP_FORMATTING");
    run_with_timeout(cmd, b"", secs(60))
}

/// The page as a reader sees it, one line per paragraph line, hyphens
/// and minus signs as `-`.
fn rendered(page: &Path) -> String {
    let out = man(page, 1000, false);
    assert!(out.status.success(), "man -l {}: {}", page.display(), text(&out.stderr));
    text(&out.stdout).replace(['\u{2010}', '\u{2212}'], "-")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for sub in fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        for f in fs::read_dir(&sub).unwrap() {
            all.push(f.unwrap().path());
        }
    }
    all.sort();
    all
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Scenario 1.
#[test]
fn layout_the_package_installs() {
    let (_tmp, dir) = generate();
    assert_eq!(names(&dir), ["completions", "man1", "man5", "man8"]);
    let man1 = names(&dir.join("man1"));
    for name in
        ["sendmail", "newaliases", "mailq", "postqueue", "postsuper", "postcat", "postconf", "postmap", "postfix"]
    {
        assert!(man1.contains(&format!("posthorn-{name}.1")), "no posthorn-{name}.1 in {man1:?}");
    }
    assert!(man1.contains(&"posthorn-exim.1".to_string()) && man1.contains(&"posthorn-exiqgrep.1".to_string()));
    assert!(man1.iter().all(|n| n.starts_with("posthorn-")), "a page named like another package's: {man1:?}");
    assert_eq!(names(&dir.join("man5")), ["posthorn.toml.5"]);
    let man8 = names(&dir.join("man8"));
    for page in [
        "posthorn.8",
        "posthorn-serve.8",
        "posthorn-check.8",
        "posthorn-check-client.8",
        "posthorn-queue.8",
        "posthorn-queue-delete.8",
    ] {
        assert!(man8.contains(&page.to_string()), "no {page} in {man8:?}");
    }
    assert!(!man8.iter().any(|n| n.contains("manpages")), "the hidden subcommand got a page: {man8:?}");
    assert_eq!(names(&dir.join("completions")), ["_posthorn", "posthorn.bash"]);
    // Each page names itself in .TH, in the section its directory says.
    for page in files(&dir).into_iter().filter(|p| !p.starts_with(dir.join("completions"))) {
        let source = fs::read_to_string(&page).unwrap();
        let section = page.extension().unwrap().to_str().unwrap().to_string();
        let th = source.lines().find(|l| l.starts_with(".TH ")).unwrap_or_else(|| panic!("{}: no .TH", page.display()));
        let words: Vec<&str> = th.split_whitespace().collect();
        assert_eq!(words[2], section, "{}: {th}", page.display());
        assert!(th.contains(&format!("posthorn {}", env!("CARGO_PKG_VERSION"))), "{}: {th}", page.display());
    }
}

/// Scenario 2.
#[test]
fn every_page_renders_without_warnings() {
    let (_tmp, dir) = generate();
    let pages: Vec<PathBuf> = files(&dir).into_iter().filter(|p| !p.starts_with(dir.join("completions"))).collect();
    assert!(pages.len() > 20, "{pages:?}");
    for page in pages {
        let out = man(&page, 80, true);
        assert!(out.status.success(), "man -l {} exited {}", page.display(), out.status);
        assert_eq!(text(&out.stderr), "", "man --warnings -l {}", page.display());
        assert!(text(&out.stdout).contains("NAME"), "{} rendered no NAME section", page.display());
    }
}

/// `posthorn postconf ARGS` on a file holding `body`; its `key = value` lines.
fn postconf(body: &str, args: &[&str]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("posthorn.toml");
    fs::write(&config, body).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("postconf").arg("-c").arg(&config).args(args);
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "postconf {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.trim_end_matches(" =").to_string(), String::new()),
        })
        .collect()
}

/// The rendered entry of `key`: the lines under its tag (a tag shorter
/// than the indent, `role`, has the first line beside it).
fn entry<'a>(page: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let lines: Vec<&str> = page.lines().collect();
    let beside = |l: &'a str| l.trim().strip_prefix(key).filter(|rest| rest.is_empty() || rest.starts_with(' '));
    let start = lines.iter().position(|l| beside(l).is_some())?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let tag = indent(lines[start]);
    let mut body: Vec<&str> = beside(lines[start]).map(str::trim).filter(|b| !b.is_empty()).into_iter().collect();
    body.extend(lines[start + 1..].iter().take_while(|l| !l.trim().is_empty() && indent(l) > tag));
    Some(body)
}

/// Scenario 3.
#[test]
fn the_configuration_page_has_every_key_with_its_defaults() {
    let (_tmp, dir) = generate();
    let page = rendered(&dir.join("man5/posthorn.toml.5"));
    let satellite = postconf("role = \"satellite\"\n", &["-d"]);
    let hub = postconf("role = \"hub\"\n", &["-d"]);
    assert!(satellite.len() > 80, "{satellite:?}");
    // Defaults that depend on the host (its name, the size of the spool's
    // filesystem) are given in words; the page says which.
    let in_words = [
        ("hostname", "the system's host name"),
        ("myorigin", "the hostname"),
        ("access.local_domains", "the hostname and localhost"),
        ("queue.min_free", "at most 5% of the spool's filesystem"),
        ("role", "satellite"),
    ];
    for ((key, sat), (hub_key, hub_value)) in satellite.iter().zip(&hub) {
        assert_eq!(key, hub_key, "postconf -d lists keys in one order for both roles");
        let body = entry(&page, key).unwrap_or_else(|| panic!("posthorn.toml(5) has no entry for {key}"));
        let default = body
            .iter()
            .find_map(|l| l.trim().strip_prefix("Default: "))
            .unwrap_or_else(|| panic!("{key}: no Default: line in {body:?}"));
        if let Some((_, words)) = in_words.iter().find(|(k, _)| k == key) {
            assert!(default.contains(words), "{key}: Default: {default}");
            continue;
        }
        let shown = |v: &str| if v.is_empty() { "unset".to_string() } else { v.to_string() };
        let expected = if sat == hub_value {
            shown(sat)
        } else {
            format!("{} (satellite), {} (hub)", shown(sat), shown(hub_value))
        };
        assert_eq!(default, expected, "{key}: the page's default is not what postconf -d prints");
        assert!(body.len() > 1 && !body[0].trim().starts_with("Default:"), "{key}: no description");
    }
    // Postfix names, as `postconf` answers to them.
    for (postfix, key) in [
        ("relayhost", "relay.smarthosts"),
        ("mynetworks", "access.trusted_networks"),
        ("message_size_limit", "smtp.max_message_size"),
        ("virtual_alias_maps", "rewrite.virtual_alias_maps"),
    ] {
        let asked = postconf("role = \"hub\"\n", &["-d", postfix]);
        assert_eq!(asked.len(), 1, "postconf answers to {postfix}");
        let body = entry(&page, key).unwrap();
        assert!(body.iter().any(|l| l.trim() == format!("Postfix: {postfix}")), "{key}: {body:?}");
    }
    assert!(entry(&page, "rewrite.alias_maps").unwrap().iter().any(|l| l.contains("Exim: the system_aliases")));
}

/// The option letters a usage message names: `[-c config]`, `[-nNsvw]`.
fn usage_letters(usage: &str) -> Vec<char> {
    let mut letters = Vec::new();
    for word in usage.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|') {
        if let Some(flags) = word.strip_prefix('-').filter(|f| !f.starts_with('-')) {
            letters.extend(flags.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '#'));
        }
    }
    letters.sort();
    letters.dedup();
    letters
}

/// Scenario 4.
#[test]
fn every_option_a_command_accepts_is_on_its_page() {
    let (_tmp, dir) = generate();
    for name in ["postqueue", "postsuper", "postcat", "postconf", "postmap", "postfix", "mailq", "exiqgrep"] {
        // `-Z` is no option of any of them: the usage message follows.
        let mut cmd = Command::new(BIN);
        cmd.arg(name).arg("-Z");
        let out = run_with_timeout(cmd, b"", secs(60));
        assert_eq!(out.status.code(), Some(64), "{name} -Z");
        let usage = text(&out.stderr);
        let letters = usage_letters(&usage[usage.find("usage:").unwrap_or_else(|| panic!("{name}: {usage}"))..]);
        assert!(letters.len() >= 2, "{name}: {usage}");
        let page = rendered(&dir.join(format!("man1/posthorn-{name}.1")));
        for letter in letters.iter().filter(|l| **l != 'Z') {
            assert!(
                page.lines().any(|l| l.split([' ', ',', '[', '|']).any(|w| w == format!("-{letter}"))),
                "posthorn-{name}(1) does not document -{letter}, which `{name}` accepts ({usage})"
            );
        }
    }
}

/// `script` run by bash after sourcing the completion; its stdout.
fn bash(completions: &Path, script: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!("source {}/posthorn.bash\n{script}", completions.display()));
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "bash: {}", text(&out.stderr));
    text(&out.stdout)
}

/// What bash's completion offers for the words of `line` (the last one
/// being completed, possibly empty).
fn complete(completions: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let script = format!(
        "COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
         _posthorn posthorn '{}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        quoted.join(" "),
        words[cword]
    );
    bash(completions, &script).lines().map(String::from).collect()
}

/// Scenario 5.
#[test]
fn shells_load_and_use_the_completions() {
    need("bash");
    let (_tmp, dir) = generate();
    let completions = dir.join("completions");
    let registered = bash(&completions, "complete -p posthorn");
    assert!(registered.contains("-F _posthorn") && registered.trim_end().ends_with(" posthorn"), "{registered}");
    assert_eq!(complete(&completions, "posthorn qu"), ["queue"]);
    let verbs = complete(&completions, "posthorn queue ");
    for verb in ["list", "show", "why", "delete", "hold", "release", "requeue", "bounce", "flush"] {
        assert!(verbs.iter().any(|v| v == verb), "posthorn queue {verb} not offered: {verbs:?}");
    }
    let top = complete(&completions, "posthorn ");
    for sub in ["serve", "check", "reload", "route", "auth", "dkim", "install-links"] {
        assert!(top.iter().any(|v| v == sub), "{sub} not offered: {top:?}");
    }
    assert!(!top.iter().any(|v| v == "manpages"), "the hidden subcommand is offered: {top:?}");
    assert_eq!(complete(&completions, "posthorn queue delete --old"), ["--older-than"]);

    need("zsh");
    let zsh = dir.join("completions/_posthorn");
    let out = run_with_timeout(
        {
            let mut cmd = Command::new("zsh");
            cmd.arg("-n").arg(&zsh);
            cmd
        },
        b"",
        secs(60),
    );
    assert!(out.status.success(), "zsh -n: {}", text(&out.stderr));
    // compinit reads the #compdef line of every file on fpath: the one
    // the package installs in vendor-completions is found the same way.
    let script = format!(
        "fpath=({} $fpath); autoload -U compinit; compinit -u -D; print -r -- ${{_comps[posthorn]}}; \
         autoload +X _posthorn && print -r -- loaded",
        completions.display()
    );
    let mut cmd = Command::new("zsh");
    cmd.arg("-fc").arg(script).env("HOME", dir.as_os_str());
    let out = run_with_timeout(cmd, b"", secs(60));
    assert!(out.status.success(), "zsh: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "_posthorn\nloaded\n", "zsh stderr: {}", text(&out.stderr));
}
