//! The aliases(5) grammar (`/etc/aliases`): `name: value, value, ...`, with
//! the same comments and continuation lines as postmap sources, and names
//! that may be written in double quotes; and the grammar of the
//! `:include:` files an alias may name.
//!
//! Each value is one [`Target`]: a plain local name (`root`), an address
//! (`ops@example.org`), the `\name` escape (deliver to the mailbox of
//! `name`, no further aliasing), `:include:/absolute/path` (the
//! addresses listed in that file, read when mail is expanded), a command
//! (`|cmd`, run by `local:` as the alias file's owner) or a file
//! (`/path`, appended to as an mbox). An `:include:` file may list only
//! addresses and other includes: a command or file in one makes the
//! recipient bounce (`rewrite`). Tables with this syntax are opened with
//! [`Table::open`](super::table::Table::open) and [`Syntax::Aliases`](super::table::Syntax);
//! this module only parses one logical line, or one include file's text.

use super::table::{split_list, unquote_prefix};
pub(crate) use crate::message::alias_items::{Target, parse_target};

/// Parses one logical line of an alias file into (name, value), the value
/// being the checked list joined with `", "` (split it again with
/// [`split_list`]).
pub(crate) fn parse_line(line: &str) -> Result<(String, String), String> {
    let (name, rest) = if line.starts_with('"') {
        let (name, rest) = unquote_prefix(line)?;
        (name, rest.trim_start())
    } else {
        let end = line.find(':').ok_or("need name: value pair")?;
        let name = line[..end].trim_end();
        if name.contains(char::is_whitespace) {
            return Err(format!("whitespace in alias name {name:?}; put the name in double quotes"));
        }
        (name.to_string(), &line[end..])
    };
    let Some(values) = rest.strip_prefix(':') else { return Err("need name: value pair".into()) };
    if name.is_empty() {
        return Err("empty alias name".into());
    }
    let items = split_list(values);
    if items.is_empty() {
        return Err(format!("alias {name:?} has no value"));
    }
    for item in &items {
        check_value(item)?;
    }
    Ok((name, items.join(", ")))
}

/// Accepts what an alias file may hold.
fn check_value(item: &str) -> Result<(), String> {
    parse_target(item).map(|_| ())
}

/// The values of an `:include:` file: addresses separated by commas or
/// line ends, `#` comment lines and blank lines skipped. Each comes with
/// its line number; a value that does not parse is an error naming it.
pub(crate) fn parse_include(text: &str) -> Result<Vec<(usize, Target)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        for item in split_list(trimmed) {
            out.push((i + 1, parse_target(&item).map_err(|e| (i + 1, e))?));
        }
    }
    Ok(out)
}

/// The uids owning the alias files of `alias_maps` (table specs) that
/// list `target`, a command or file exactly as written there: the local
/// delivery agent runs or writes one only for an account such a file is
/// owned by (or, for root's, `local.default_privs`). A file that cannot
/// be read lists nothing.
pub(crate) fn owners_listing(alias_maps: &[String], target: &crate::deliver::local::Target) -> Vec<u32> {
    use super::table::{Syntax, Table};
    use crate::deliver::local::Target as Wanted;
    use std::os::unix::fs::MetadataExt;
    let mut owners = Vec::new();
    for spec in alias_maps {
        let Ok(table) = Table::open_str(spec, Syntax::Aliases) else { continue };
        let Some(owner) = table.path().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.uid()) else { continue };
        let lists = table.contents().entries().iter().any(|entry| {
            split_list(&entry.value).iter().any(|item| match (parse_target(item), target) {
                (Ok(Target::Command(c)), Wanted::Command { command, .. }) => &c == command,
                (Ok(Target::File(f)), Wanted::File { path }) => &f == path,
                _ => false,
            })
        });
        if lists {
            owners.push(owner);
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::{Syntax, Table, parse};

    #[test]
    fn parses_alias_lines() {
        let cases: &[(&str, (&str, &str))] = &[
            ("postmaster: root", ("postmaster", "root")),
            ("postmaster:root", ("postmaster", "root")),
            ("postmaster : root", ("postmaster", "root")),
            ("ops: a@example.org, b@example.org", ("ops", "a@example.org, b@example.org")),
            ("ops: a@example.org b@example.org,c", ("ops", "a@example.org, b@example.org, c")),
            ("ops: <a@example.org>", ("ops", "a@example.org")),
            ("root: \\root, admin@example.org", ("root", "\\root, admin@example.org")),
            ("\"john smith\": js", ("john smith", "js")),
            ("\"john smith\" : js", ("john smith", "js")),
            ("quoted: \"a b\"@example.org", ("quoted", "\"a b\"@example.org")),
            ("MixedCase: x", ("MixedCase", "x")),
            ("list: :include:/etc/mail/list", ("list", ":include:/etc/mail/list")),
            ("prog: |/usr/bin/procmail", ("prog", "|/usr/bin/procmail")),
            ("prog: a@x, \"|/usr/bin/vacation -a x\"", ("prog", "a@x, \"|/usr/bin/vacation -a x\"")),
            ("log: /var/log/mail.txt", ("log", "/var/log/mail.txt")),
            ("list: a, :INCLUDE:/etc/mail/list", ("list", "a, :INCLUDE:/etc/mail/list")),
        ];
        for (line, (name, value)) in cases {
            assert_eq!(parse_line(line), Ok((name.to_string(), value.to_string())), "{line:?}");
        }
    }

    #[test]
    fn refuses_commands_files_includes_and_junk() {
        let cases: &[(&str, &str)] = &[
            ("prog: |", "|: empty command"),
            ("prog: \"|  \"", "empty command"),
            ("list: :include:", ":include: without a file name"),
            ("list: :include:lists/staff", ":include: needs an absolute path"),
            ("noname", "need name: value pair"),
            ("\"quoted\" root", "need name: value pair"),
            (": root", "empty alias name"),
            ("empty:", "has no value"),
            ("empty: , ,", "has no value"),
            ("two words: root", "put the name in double quotes"),
            ("bad: @example.org", "without a local part"),
            ("bad: user@", "without a domain"),
            ("bad: \\", "empty address"),
            ("root: admin # the admin", "#: comments must be on a line of their own"),
            ("bad: \\user@example.org", "local names only"),
            ("\"open: x", "missing closing double quote"),
        ];
        for (line, want) in cases {
            match parse_line(line) {
                Ok(v) => panic!("{line:?} accepted as {v:?}"),
                Err(e) => assert!(e.contains(want), "{line:?}: {e}"),
            }
        }
    }

    #[test]
    fn targets_table() {
        let cases: &[(&str, Target)] = &[
            ("root", Target::Address("root".into())),
            ("a@example.org", Target::Address("a@example.org".into())),
            ("\\root", Target::Mailbox("root".into())),
            ("|/usr/local/bin/ticket-intake", Target::Command("/usr/local/bin/ticket-intake".into())),
            ("\"|/usr/bin/vacation -a x\"", Target::Command("/usr/bin/vacation -a x".into())),
            ("/var/log/mail-archive", Target::File("/var/log/mail-archive".into())),
            (":include:/etc/mail/staff", Target::Include("/etc/mail/staff".into())),
            (":Include: /etc/mail/staff", Target::Include("/etc/mail/staff".into())),
        ];
        for (item, want) in cases {
            assert_eq!(parse_target(item).as_ref(), Ok(want), "{item:?}");
        }
    }

    #[test]
    fn include_files() {
        let text = "# staff\nalice, bob@example.net\n\n  carol\n:include:/etc/mail/more\n|/bin/cat\n";
        let got = parse_include(text).unwrap();
        assert_eq!(
            got,
            vec![
                (2, Target::Address("alice".into())),
                (2, Target::Address("bob@example.net".into())),
                (4, Target::Address("carol".into())),
                (5, Target::Include("/etc/mail/more".into())),
                (6, Target::Command("/bin/cat".into())),
            ]
        );
        assert_eq!(
            parse_include("a\n:include:rel\n"),
            Err((2, ":include:rel: :include: needs an absolute path".into()))
        );
    }

    #[test]
    fn alias_files_with_continuations_and_comments() {
        let text = "# /etc/aliases\n\
                    postmaster:    root\n\
                    Ops: a@example.org,\n\
                    \x20   b@example.org\n\
                    \n\
                    # a comment\n\
                    root: admin\n";
        let c = parse(text, Syntax::Aliases);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(c.get("postmaster"), Some("root"));
        assert_eq!(c.get("ops"), Some("a@example.org, b@example.org"));
        assert_eq!(c.find("OPS").unwrap().line, 3);
        assert_eq!(c.get("root"), Some("admin"));
    }

    #[test]
    fn an_empty_command_makes_the_file_fail_with_file_and_line() {
        let e = Table::from_text("/etc/aliases", "postmaster: root\n\nbackup: \"| \"\n", Syntax::Aliases).unwrap_err();
        assert_eq!(e.to_string(), "/etc/aliases:3: \"| \": empty command");
    }

    #[test]
    fn owners_listing_names_the_files_that_list_a_command_or_file() {
        use crate::deliver::local::Target as Wanted;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let aliases = dir.path().join("aliases");
        std::fs::write(&aliases, "t: \"|/bin/record x\"\na: /var/tmp/archive\n").unwrap();
        let owner = std::fs::metadata(&aliases).unwrap().uid();
        let maps = [aliases.display().to_string(), dir.path().join("missing").display().to_string()];
        let command = |c: &str| Wanted::Command { command: c.into(), time_limit_secs: 1, delimiter: String::new() };
        assert_eq!(owners_listing(&maps, &command("/bin/record x")), [owner]);
        assert_eq!(owners_listing(&maps, &Wanted::File { path: "/var/tmp/archive".into() }), [owner]);
        assert!(owners_listing(&maps, &command("/bin/record y")).is_empty(), "not the file's text");
        assert!(owners_listing(&maps, &Wanted::File { path: "/etc/passwd".into() }).is_empty());
    }
}
