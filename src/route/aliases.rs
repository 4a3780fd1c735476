//! The aliases(5) grammar (`/etc/aliases`): `name: value, value, ...`, with
//! the same comments and continuation lines as postmap sources, and names
//! that may be written in double quotes.
//!
//! Only addresses are accepted as values: plain local names (`root`),
//! addresses (`ops@example.org`) and the `\name` escape (deliver to the
//! mailbox of `name`, no further aliasing). Deliveries to a command
//! (`|cmd`), to a file (`/path`) and `:include:` lists are refused as bad
//! lines naming the file and line: posthorn never runs commands or writes
//! files on behalf of an alias file. Tables with this syntax are opened with
//! [`Table::open`](super::table::Table::open) and [`Syntax::Aliases`](super::table::Syntax);
//! this module only parses one logical line.

use super::table::{split_list, unquote_prefix};

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

/// Accepts an address or local name; refuses commands, files and includes.
fn check_value(item: &str) -> Result<(), String> {
    // `"|cmd args"` is the usual way to write a command with spaces.
    let bare = match unquote_prefix(item) {
        Ok((inner, "")) if item.starts_with('"') => inner,
        _ => item.to_string(),
    };
    if bare.starts_with('#') {
        // `root: admin # note` would otherwise send mail to `#` and `note`.
        return Err(format!("{item}: comments must be on a line of their own"));
    }
    if bare.starts_with('|') {
        return Err(format!(
            "{item}: delivery to a command is not supported (posthorn never runs commands from alias files)"
        ));
    }
    if bare.starts_with('/') {
        return Err(format!("{item}: delivery to a file is not supported (posthorn delivers to addresses only)"));
    }
    if bare.get(..9).is_some_and(|p| p.eq_ignore_ascii_case(":include:")) {
        return Err(format!("{item}: :include: files are not supported; list the addresses in the alias"));
    }
    let addr = bare.strip_prefix('\\').unwrap_or(&bare);
    match addr.rsplit_once('@') {
        _ if addr.is_empty() => Err(format!("{item}: empty address")),
        Some(("", _)) => Err(format!("{item}: address without a local part")),
        Some((_, "")) => Err(format!("{item}: address without a domain")),
        Some(_) if item.starts_with('\\') => Err(format!("{item}: \\ applies to local names only")),
        _ => Ok(()),
    }
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
        ];
        for (line, (name, value)) in cases {
            assert_eq!(parse_line(line), Ok((name.to_string(), value.to_string())), "{line:?}");
        }
    }

    #[test]
    fn refuses_commands_files_includes_and_junk() {
        let cases: &[(&str, &str)] = &[
            ("prog: |/usr/bin/procmail", "delivery to a command is not supported"),
            ("prog: \"|/usr/bin/vacation -a x\"", "delivery to a command is not supported"),
            ("prog: a@x, |cmd", "|cmd: delivery to a command"),
            ("log: /var/log/mail.txt", "delivery to a file is not supported"),
            ("nobody: /dev/null", "delivery to a file is not supported"),
            ("list: :include:/etc/mail/list", ":include: files are not supported"),
            ("list: :INCLUDE:/etc/mail/list", ":include: files are not supported"),
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
    fn a_pipe_makes_the_file_fail_with_file_and_line() {
        let e = Table::from_text("/etc/aliases", "postmaster: root\n\nbackup: |/usr/local/bin/save\n", Syntax::Aliases)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/aliases:3: |/usr/local/bin/save: delivery to a command is not supported \
             (posthorn never runs commands from alias files)"
        );
    }
}
