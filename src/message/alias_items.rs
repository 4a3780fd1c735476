//! The items of an alias right-hand side (aliases(5)) and of the files
//! that share its grammar (`:include:` files, `.forward` files): the list
//! split at commas and blanks with quotes kept whole, and each item
//! classified as an address, `\name`, `|command`, `/file` or
//! `:include:/path`. Pure text; `route::aliases` reads alias files with
//! it, `deliver::forward` a user's `.forward`.

/// Reads a `"..."` string at the start of `s` (`\"` and `\\` escape);
/// returns its contents and what follows the closing quote.
pub(crate) fn unquote_prefix(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("missing closing double quote".into())
}

/// Splits a list value (virtual(5), aliases(5)) at commas and whitespace,
/// keeping double-quoted parts whole (`"a, b"@example.org` is one item) and
/// taking the address out of `<...>`. Items are returned as written.
pub(crate) fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if quoted {
            item.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == ',' || c.is_whitespace() {
            push_item(&mut items, &mut item);
        } else {
            quoted = c == '"';
            item.push(c);
        }
    }
    push_item(&mut items, &mut item);
    items
}

fn push_item(items: &mut Vec<String>, item: &mut String) {
    let s = std::mem::take(item);
    let s = match s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        Some(inner) => inner.to_string(),
        None => s,
    };
    if !s.is_empty() {
        items.push(s);
    }
}

/// One value of an alias entry or line of an `:include:` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A local name or an address, as written (quotes kept).
    Address(String),
    /// `\name`: the mailbox of `name`, not aliased again.
    Mailbox(String),
    /// `|command`: the command text after the bar.
    Command(String),
    /// `/path`: a file to append to.
    File(String),
    /// `:include:/path`: the addresses in that file.
    Include(String),
}

/// Classifies and checks one value. Errors say what is wrong with it.
pub(crate) fn parse_target(item: &str) -> Result<Target, String> {
    // `"|cmd args"` is the usual way to write a command with spaces.
    let bare = match unquote_prefix(item) {
        Ok((inner, "")) if item.starts_with('"') => inner,
        _ => item.to_string(),
    };
    if bare.starts_with('#') {
        // `root: admin # note` would otherwise send mail to `#` and `note`.
        return Err(format!("{item}: comments must be on a line of their own"));
    }
    if let Some(command) = bare.strip_prefix('|') {
        if command.trim().is_empty() {
            return Err(format!("{item}: empty command"));
        }
        return Ok(Target::Command(command.trim().to_string()));
    }
    if bare.starts_with('/') {
        return Ok(Target::File(bare));
    }
    if bare.get(..9).is_some_and(|p| p.eq_ignore_ascii_case(":include:")) {
        let path = bare[9..].trim();
        if path.is_empty() {
            return Err(format!("{item}: :include: without a file name"));
        }
        if !path.starts_with('/') {
            return Err(format!("{item}: :include: needs an absolute path"));
        }
        return Ok(Target::Include(path.to_string()));
    }
    let addr = bare.strip_prefix('\\').unwrap_or(&bare);
    match addr.rsplit_once('@') {
        _ if addr.is_empty() => Err(format!("{item}: empty address")),
        Some(("", _)) => Err(format!("{item}: address without a local part")),
        Some((_, "")) => Err(format!("{item}: address without a domain")),
        Some(_) if item.starts_with('\\') => Err(format!("{item}: \\ applies to local names only")),
        _ if item.starts_with('\\') => Ok(Target::Mailbox(addr.to_string())),
        _ => Ok(Target::Address(item.to_string())),
    }
}
