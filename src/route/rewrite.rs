//! Recipient rewriting: virtual alias expansion (virtual(5)), catch-all
//! entries, and local aliases (aliases(5)), recursively, with loop
//! detection, limits and duplicate removal. Pure: tables in, recipients and
//! a trace of every step out (the trace is what `posthorn route explain`
//! prints).
//!
//! For each address `user@domain`, in Postfix's order:
//! 1. virtual alias maps, keys `user@domain`, then `user` (only when
//!    `domain` is local, as decided by the caller's predicate), then the
//!    catch-all `@domain`; each key is tried in every table before the next;
//! 2. if no virtual entry matched and `domain` is local: the alias maps,
//!    key `user`.
//!
//! A match replaces the address with the entry's list; names without a
//! domain are qualified with the origin domain (Postfix's `@$myorigin`), and
//! every result is expanded again. An address that maps to itself
//! (`user@d  user@d, other@d`) is kept as a recipient and not expanded
//! further; `\name` in an alias file is the local mailbox `name`, not
//! expanded either. An address that comes back to one it was expanded
//! from is a loop: an error, not a silent drop.
//!
//! An alias value `:include:/path` stands for the addresses listed in that
//! file, read (as the daemon's account, at most 1 MiB) each time an
//! address is expanded, so an edited list applies at once; include files
//! may name other include files, at most [`INCLUDE_DEPTH_LIMIT`] deep. A
//! file that cannot be read defers the recipient; a command (`|cmd`) or a
//! file (`/path`) listed in one bounces it, as Postfix's default
//! `allow_mail_to_commands` and `allow_mail_to_files` (no `include`) have
//! it.
//!
//! Differences from Postfix, on purpose: a loop is reported as such rather
//! than running into the nesting limit; results come out depth-first in
//! table order; address extensions (`user+ext`) are not stripped.

use super::aliases::{Target, parse_include, parse_target};
use super::table::{Table, fold, split_list, unquote_prefix};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Postfix's `virtual_alias_recursion_limit`.
pub(crate) const RECURSION_LIMIT: usize = 1000;
/// Postfix's `virtual_alias_expansion_limit`.
pub(crate) const EXPANSION_LIMIT: usize = 1000;

/// How deep `:include:` files may name other `:include:` files.
pub(crate) const INCLUDE_DEPTH_LIMIT: usize = 10;
/// Largest `:include:` file read.
const INCLUDE_MAX_BYTES: u64 = 1 << 20;

/// Bounds on one expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Longest chain of alias lookups that matched.
    pub(crate) recursion: usize,
    /// Most addresses one recipient may turn into (counted before
    /// duplicates are removed).
    pub(crate) expansion: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { recursion: RECURSION_LIMIT, expansion: EXPANSION_LIMIT }
    }
}

/// Why a recipient could not be expanded. Postfix defers on the limits
/// (its texts say "try again later"), so [`RewriteError::is_permanent`] is
/// false for them; a loop is a permanent error (RFC 3463 X.4.6, routing
/// loop detected).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RewriteError {
    #[error("alias loop: {}", chain.join(" -> "))]
    Loop { chain: Vec<String> },
    #[error("unreasonable alias nesting for {address}: more than {limit} levels")]
    TooDeep { address: String, limit: usize },
    #[error("unreasonable alias expansion for {address}: more than {limit} addresses")]
    TooMany { address: String, limit: usize },
    /// An `:include:` file that cannot be read or parsed: deferred, so the
    /// administrator can fix it without mail being lost.
    #[error(":include:{path}: {why}")]
    IncludeFailed { path: String, why: String },
    /// A command or file listed in an `:include:` file: bounced.
    #[error(":include:{path} line {line}: {why}")]
    IncludeRefused { path: String, line: usize, why: String },
    /// A command or file in an alias file that the configuration does not
    /// allow there: bounced.
    #[error("{table} line {line}: {why}")]
    NotAllowed { table: String, line: usize, why: String },
}

impl RewriteError {
    #[cfg(test)]
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            RewriteError::Loop { .. } | RewriteError::IncludeRefused { .. } | RewriteError::NotAllowed { .. }
        )
    }
}

/// Which kind of table matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Virtual,
    Alias,
}

/// What happened to one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// A name without a domain got the origin domain.
    Qualified { to: String },
    /// A table entry replaced the address with `to`.
    /// `includes`: the `:include:` files the entry named, in order.
    Expanded { stage: Stage, table: String, line: usize, key: String, to: Vec<String>, includes: Vec<String> },
    /// No table entry: a final recipient.
    Final,
    /// It maps to itself: a final recipient, not expanded again.
    SelfReference,
    /// `\name` in an alias file: a final recipient, not expanded.
    Literal,
    /// Already a recipient: dropped.
    Duplicate,
    /// An alias entry lists commands or files (`what`): the address is a
    /// final recipient that `local:` delivers to them.
    Delivers { table: String, line: usize, what: Vec<String> },
}

/// One step of an expansion; `depth` is the number of lookups that led
/// here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) depth: usize,
    pub(crate) address: String,
    pub(crate) action: Resolution,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:width$}{}: ", "", self.address, width = self.depth * 2)?;
        match &self.action {
            Resolution::Qualified { to } => write!(f, "qualified as {to}"),
            Resolution::Expanded { stage, table, line, key, to, includes } => {
                let what = match stage {
                    Stage::Virtual => "virtual alias",
                    Stage::Alias => "alias",
                };
                write!(f, "{what} ({table} line {line}, key \"{key}\") -> {}", to.join(", "))?;
                for path in includes {
                    write!(f, " (listed in :include:{path})")?;
                }
                Ok(())
            }
            Resolution::Final => write!(f, "final recipient"),
            Resolution::SelfReference => write!(f, "maps to itself: final recipient"),
            Resolution::Literal => write!(f, "final recipient (\\name in an alias file)"),
            Resolution::Duplicate => write!(f, "duplicate, dropped"),
            Resolution::Delivers { table, line, what } => {
                write!(f, "alias ({table} line {line}) ends in {}: final recipient for local:", what.join(", "))
            }
        }
    }
}

/// The outcome of expanding one recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expansion {
    /// Final recipients, duplicates removed, in the order found.
    pub(crate) recipients: Vec<String>,
    pub(crate) trace: Vec<Step>,
}

impl fmt::Display for Expansion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.trace {
            writeln!(f, "{step}")?;
        }
        Ok(())
    }
}

/// Decides whether a (lower-case) domain is local: `$mydestination`,
/// `$myorigin`, in Postfix's words.
pub(crate) type LocalDomains = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Expands recipients through virtual alias maps and alias maps.
/// Cheap to clone; the tables are shared and pick up their changes
/// themselves.
#[derive(Clone)]
pub(crate) struct Rewriter {
    virtual_maps: Vec<Arc<Table>>,
    alias_maps: Vec<Arc<Table>>,
    /// `local.recipient_delimiter`; empty: none.
    delimiter: String,
    origin: String,
    is_local: LocalDomains,
    limits: Limits,
    /// `allow_mail_to_commands`, `allow_mail_to_files` name `alias`.
    commands_allowed: bool,
    files_allowed: bool,
}

impl fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewriter")
            .field("virtual_maps", &self.virtual_maps.iter().map(|t| t.name()).collect::<Vec<_>>())
            .field("alias_maps", &self.alias_maps.iter().map(|t| t.name()).collect::<Vec<_>>())
            .field("origin", &self.origin)
            .field("limits", &self.limits)
            .finish()
    }
}

/// One table hit.
struct Hit {
    stage: Stage,
    table: String,
    line: usize,
    key: String,
    value: String,
}

/// One address in the expansion tree.
struct Node {
    address: String,
    folded: String,
    parent: Option<usize>,
    depth: usize,
    literal: bool,
}

impl Rewriter {
    /// No tables yet: every address is final. `origin` qualifies bare
    /// names; `is_local` gets a lower-case domain.
    pub(crate) fn new(origin: &str, is_local: impl Fn(&str) -> bool + Send + Sync + 'static) -> Rewriter {
        Rewriter {
            virtual_maps: Vec::new(),
            alias_maps: Vec::new(),
            delimiter: String::new(),
            origin: fold(origin),
            is_local: Arc::new(is_local),
            limits: Limits::default(),
            commands_allowed: true,
            files_allowed: true,
        }
    }

    /// Tables in `virtual_alias_maps` syntax ([`Syntax::Map`](super::table::Syntax)).
    pub(crate) fn with_virtual_maps(mut self, maps: Vec<Arc<Table>>) -> Rewriter {
        self.virtual_maps = maps;
        self
    }

    /// Tables in aliases(5) syntax ([`Syntax::Aliases`](super::table::Syntax)).
    pub(crate) fn with_alias_maps(mut self, maps: Vec<Arc<Table>>) -> Rewriter {
        self.alias_maps = maps;
        self
    }

    /// `local.recipient_delimiter`: an alias name `user+tag` without an
    /// entry of its own is looked up as `user`, as local(8) does.
    pub(crate) fn with_recipient_delimiter(mut self, delimiter: &str) -> Rewriter {
        self.delimiter = delimiter.to_string();
        self
    }

    /// Whether alias files may deliver to commands and to files.
    pub(crate) fn with_allowed(mut self, commands: bool, files: bool) -> Rewriter {
        self.commands_allowed = commands;
        self.files_allowed = files;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_limits(mut self, limits: Limits) -> Rewriter {
        self.limits = limits;
        self
    }

    /// Expands one recipient into its final recipients.
    pub(crate) fn expand(&self, address: &str) -> Result<Expansion, RewriteError> {
        let mut out = Expansion::default();
        let mut address = address.trim().to_string();
        if split_address(&address).1.is_none() {
            let to = self.qualify(&address);
            out.trace.push(Step { depth: 0, address, action: Resolution::Qualified { to: to.clone() } });
            address = to;
        }
        let mut nodes = vec![Node { folded: fold(&address), address, parent: None, depth: 0, literal: false }];
        let mut stack = vec![0];
        // Addresses that mapped to themselves: final wherever they turn up.
        let mut fixed: HashSet<String> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        // Addresses alive (pending or final), as Postfix counts them.
        let mut alive = 1usize;
        while let Some(n) = stack.pop() {
            let node = &nodes[n];
            let (depth, address) = (node.depth, node.address.clone());
            if node.literal || fixed.contains(&node.folded) {
                let action = if node.literal { Resolution::Literal } else { Resolution::SelfReference };
                finish(&mut out, &mut seen, depth, address, action);
                continue;
            }
            if let Some(chain) = loop_chain(&nodes, n) {
                return Err(RewriteError::Loop { chain });
            }
            let Some(hit) = self.lookup(&address) else {
                finish(&mut out, &mut seen, depth, address, Resolution::Final);
                continue;
            };
            let mut includes = Vec::new();
            let mut specials = Vec::new();
            let targets = self.targets(&hit, &address, &mut includes, &mut specials)?;
            if !specials.is_empty() {
                let action = Resolution::Delivers { table: hit.table.clone(), line: hit.line, what: specials };
                finish(&mut out, &mut seen, depth, address.clone(), action);
                if targets.is_empty() {
                    continue;
                }
            }
            if targets.is_empty() {
                // A value with no addresses in it (`key ,`): deliver as is
                // rather than lose the recipient.
                finish(&mut out, &mut seen, depth, address, Resolution::Final);
                continue;
            }
            if depth >= self.limits.recursion {
                return Err(RewriteError::TooDeep { address: nodes[0].address.clone(), limit: self.limits.recursion });
            }
            alive += targets.len() - 1;
            if alive > self.limits.expansion {
                return Err(RewriteError::TooMany { address: nodes[0].address.clone(), limit: self.limits.expansion });
            }
            let folded = nodes[n].folded.clone();
            if targets.iter().any(|(t, _)| fold(t) == folded) {
                fixed.insert(folded);
            }
            let to = targets.iter().map(|(t, _)| t.clone()).collect();
            let action =
                Resolution::Expanded { stage: hit.stage, table: hit.table, line: hit.line, key: hit.key, to, includes };
            out.trace.push(Step { depth, address, action });
            for (target, literal) in targets.into_iter().rev() {
                stack.push(nodes.len());
                nodes.push(Node { folded: fold(&target), address: target, parent: Some(n), depth: depth + 1, literal });
            }
        }
        Ok(out)
    }

    /// The commands and files the alias entry for `address` lists, with
    /// the uid of the alias file that lists them and where (`table line
    /// N`); empty for any other address.
    pub(crate) fn deliveries(&self, address: &str) -> Vec<(Target, u32, String)> {
        use std::os::unix::fs::MetadataExt;
        let Some(hit) = self.lookup(address).filter(|h| h.stage == Stage::Alias) else { return Vec::new() };
        let table = self.alias_maps.iter().find(|t| t.name() == hit.table);
        // An alias file whose owner cannot be told runs nothing as anyone
        // but default_privs: root stands for that.
        let owner = table.and_then(|t| t.path()).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.uid());
        split_list(&hit.value)
            .iter()
            .filter_map(|item| parse_target(item).ok())
            .filter(|t| matches!(t, Target::Command(_) | Target::File(_)))
            .map(|t| (t, owner, format!("{} line {}", hit.table, hit.line)))
            .collect()
    }

    /// `name@origin` for a name without a domain.
    fn qualify(&self, name: &str) -> String {
        format!("{name}@{}", self.origin)
    }

    /// The first matching entry for `address`, in Postfix's order.
    fn lookup(&self, address: &str) -> Option<Hit> {
        let (local, domain) = split_address(address);
        let domain = fold(domain?);
        let local_domain = (self.is_local)(&domain);
        let mut keys = vec![address.to_string()];
        if local_domain {
            keys.push(local.to_string());
        }
        keys.push(format!("@{domain}"));
        let found = find_in(&self.virtual_maps, &keys, Stage::Virtual);
        if found.is_some() || !local_domain {
            return found;
        }
        // Alias files know local names, written without quotes.
        let name = match unquote_prefix(local) {
            Ok((inner, "")) if local.starts_with('"') => inner,
            _ => local.to_string(),
        };
        let mut names = vec![name.clone()];
        if let (base, Some(_)) = crate::config::split_extension(&self.delimiter, &name) {
            names.push(base.to_string());
        }
        find_in(&self.alias_maps, &names, Stage::Alias)
    }

    /// The addresses an entry expands `address` into, each with whether
    /// it is final as it stands (`\name`); `:include:` files in an alias
    /// entry are read, and their paths added to `includes`; commands and
    /// files go to `specials`.
    fn targets(
        &self,
        hit: &Hit,
        address: &str,
        includes: &mut Vec<String>,
        specials: &mut Vec<String>,
    ) -> Result<Vec<(String, bool)>, RewriteError> {
        let mut out = Vec::new();
        for item in split_list(&hit.value) {
            let parsed = if hit.stage == Stage::Alias { parse_target(&item).ok() } else { None };
            if let Some(Target::Include(path)) = &parsed {
                self.include(path, address, 0, includes, &mut out)?;
            } else if let Some(Target::Command(c)) = &parsed {
                if !self.commands_allowed {
                    let why =
                        format!("mail to command |{c} is not allowed (local.allow_mail_to_commands has no alias)");
                    return Err(RewriteError::NotAllowed { table: hit.table.clone(), line: hit.line, why });
                }
                specials.push(format!("|{c}"));
            } else if let Some(Target::File(f)) = &parsed {
                if !self.files_allowed {
                    let why = format!("mail to file {f} is not allowed (local.allow_mail_to_files has no alias)");
                    return Err(RewriteError::NotAllowed { table: hit.table.clone(), line: hit.line, why });
                }
                specials.push(f.clone());
            } else {
                out.push(self.target(hit.stage, &item, address));
            }
        }
        Ok(out)
    }

    /// One item of an entry as a recipient, and whether it is final.
    fn target(&self, stage: Stage, item: &str, address: &str) -> (String, bool) {
        let (local, domain) = split_address(address);
        let domain = domain.unwrap_or(&self.origin);
        if stage == Stage::Alias {
            if let Some(name) = item.strip_prefix('\\') {
                return (format!("{name}@{domain}"), true);
            }
            // `user: user, other`: the same mailbox, whatever the
            // origin domain is.
            if split_address(item).1.is_none() && fold(item) == fold(local) {
                return (address.to_string(), false);
            }
        }
        match split_address(item).1 {
            Some(_) => (item.to_string(), false),
            None => (self.qualify(item), false),
        }
    }

    /// Adds the addresses `path` lists (and those of the files it
    /// includes) to `out`.
    fn include(
        &self,
        path: &str,
        address: &str,
        depth: usize,
        includes: &mut Vec<String>,
        out: &mut Vec<(String, bool)>,
    ) -> Result<(), RewriteError> {
        let failed = |why: String| RewriteError::IncludeFailed { path: path.to_string(), why };
        if depth >= INCLUDE_DEPTH_LIMIT {
            return Err(failed(format!("include files nested more than {INCLUDE_DEPTH_LIMIT} deep")));
        }
        includes.push(path.to_string());
        let text = read_include(path).map_err(failed)?;
        let items = parse_include(&text).map_err(|(line, why)| failed(format!("line {line}: {why}")))?;
        let refused = |line, why| RewriteError::IncludeRefused { path: path.to_string(), line, why };
        for (line, target) in items {
            match target {
                Target::Include(inner) => self.include(&inner, address, depth + 1, includes, out)?,
                Target::Command(command) => {
                    return Err(refused(
                        line,
                        format!("mail to command |{command} is not allowed from an :include: file"),
                    ));
                }
                Target::File(file) => {
                    return Err(refused(line, format!("mail to file {file} is not allowed from an :include: file")));
                }
                Target::Address(a) => out.push(self.target(Stage::Alias, &a, address)),
                Target::Mailbox(name) => out.push(self.target(Stage::Alias, &format!("\\{name}"), address)),
            }
        }
        Ok(())
    }
}

/// For `newaliases`: what is wrong with the `:include:` file `path` and
/// those it names (unreadable, bad lines, commands or files listed, too
/// deep), one text per problem.
pub(crate) fn check_include(path: &str, depth: usize) -> Vec<String> {
    if depth >= INCLUDE_DEPTH_LIMIT {
        return vec![format!(":include:{path}: include files nested more than {INCLUDE_DEPTH_LIMIT} deep")];
    }
    let text = match read_include(path) {
        Ok(text) => text,
        Err(why) => return vec![format!(":include:{path}: {why}")],
    };
    match parse_include(&text) {
        Err((line, why)) => vec![format!(":include:{path} line {line}: {why}")],
        Ok(items) => items
            .into_iter()
            .flat_map(|(line, target)| match target {
                Target::Include(inner) => check_include(&inner, depth + 1),
                Target::Command(c) => {
                    vec![format!(
                        ":include:{path} line {line}: mail to command |{c} is not allowed from an :include: file"
                    )]
                }
                Target::File(f) => {
                    vec![format!(":include:{path} line {line}: mail to file {f} is not allowed from an :include: file")]
                }
                Target::Address(_) | Target::Mailbox(_) => Vec::new(),
            })
            .collect(),
    }
}

/// An include file's text: a regular file of at most [`INCLUDE_MAX_BYTES`].
fn read_include(path: &str) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(INCLUDE_MAX_BYTES + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > INCLUDE_MAX_BYTES {
        return Err(format!("larger than {INCLUDE_MAX_BYTES} bytes"));
    }
    Ok(text)
}

/// Tries each key in every table, keys first.
fn find_in(maps: &[Arc<Table>], keys: &[String], stage: Stage) -> Option<Hit> {
    keys.iter().find_map(|key| {
        maps.iter().find_map(|t| {
            t.find(key).map(|e| Hit { stage, table: t.name().to_string(), line: e.line, key: e.key, value: e.value })
        })
    })
}

/// Records a final recipient unless it is one already.
fn finish(out: &mut Expansion, seen: &mut HashSet<String>, depth: usize, address: String, action: Resolution) {
    if seen.insert(dedup_key(&address)) {
        out.recipients.push(address.clone());
        out.trace.push(Step { depth, address, action });
    } else {
        out.trace.push(Step { depth, address, action: Resolution::Duplicate });
    }
}

/// If node `n` repeats one of its ancestors: the whole path from the
/// recipient down to `n`, e.g. `s -> a -> b -> a`.
fn loop_chain(nodes: &[Node], n: usize) -> Option<Vec<String>> {
    let mut chain = vec![nodes[n].address.clone()];
    let mut repeated = false;
    let mut at = nodes[n].parent;
    while let Some(p) = at {
        repeated |= nodes[p].folded == nodes[n].folded;
        chain.push(nodes[p].address.clone());
        at = nodes[p].parent;
    }
    repeated.then(|| {
        chain.reverse();
        chain
    })
}

/// Splits at the last `@` outside quotes: (local part, domain).
pub(crate) fn split_address(address: &str) -> (&str, Option<&str>) {
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.contains('"') => (local, Some(domain)),
        _ => (address, None),
    }
}

/// Two addresses are the same recipient when they differ only in the
/// case of the domain.
fn dedup_key(address: &str) -> String {
    match split_address(address) {
        (local, Some(domain)) => format!("{local}@{}", fold(domain)),
        (local, None) => local.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::Syntax;

    const LOCAL: &[&str] = &["example.org", "mail.example.org"];

    fn rewriter(virtual_text: &str, aliases_text: &str) -> Rewriter {
        let v = Table::from_text("hash:/etc/postfix/virtual", virtual_text, Syntax::Map).unwrap();
        let a = Table::from_text("hash:/etc/aliases", aliases_text, Syntax::Aliases).unwrap();
        Rewriter::new("example.org", |d| LOCAL.contains(&d))
            .with_virtual_maps(vec![Arc::new(v)])
            .with_alias_maps(vec![Arc::new(a)])
    }

    fn expand(r: &Rewriter, address: &str) -> Vec<String> {
        match r.expand(address) {
            Ok(x) => x.recipients,
            Err(e) => panic!("{address}: {e}"),
        }
    }

    #[test]
    fn virtual_lookup_order() {
        let r = rewriter(
            "\
            root@example.org          full@example.net\n\
            root                      bare@example.net\n\
            @example.org              catchall@example.net\n\
            @staging.example.org      team@example.org\n\
            who                       bare-only-local@example.net\n\
            someone@staging.example.org  specific@example.net\n",
            "",
        );
        let cases: &[(&str, &[&str])] = &[
            // The full address beats the bare name and the catch-all.
            ("root@example.org", &["full@example.net"]),
            ("ROOT@Example.Org", &["full@example.net"]),
            // The bare name, for another local domain, beats the catch-all.
            ("root@mail.example.org", &["bare@example.net"]),
            // The catch-all for anything else in the domain.
            ("nobody@example.org", &["catchall@example.net"]),
            // ... and its result is expanded again: team@example.org falls
            // into the @example.org catch-all.
            ("x@staging.example.org", &["catchall@example.net"]),
            ("someone@staging.example.org", &["specific@example.net"]),
            // The bare name only for local domains.
            ("who@mail.example.org", &["bare-only-local@example.net"]),
            ("who@elsewhere.com", &["who@elsewhere.com"]),
            // No match at all: unchanged.
            ("a@elsewhere.com", &["a@elsewhere.com"]),
        ];
        for (address, want) in cases {
            assert_eq!(expand(&r, address), *want, "{address}");
        }
    }

    #[test]
    fn staging_catch_all_goes_to_the_team() {
        // team@example.org is itself an alias: expanded again.
        let r = rewriter("@staging.example.org team@example.org\nteam@example.org a@x.net, b@x.net\n", "");
        assert_eq!(expand(&r, "deploy@staging.example.org"), ["a@x.net", "b@x.net"]);
    }

    #[test]
    fn alias_to_two_addresses_and_qualification() {
        let r = rewriter("ops@example.org alice@example.net, bob\nroot ops\n", "");
        assert_eq!(expand(&r, "ops@example.org"), ["alice@example.net", "bob@example.org"]);
        // `root` (bare key, local domain) -> `ops` (qualified) -> two.
        assert_eq!(expand(&r, "root@mail.example.org"), ["alice@example.net", "bob@example.org"]);
        // A bare recipient is qualified first.
        let x = r.expand("ops").unwrap();
        assert_eq!(x.recipients, ["alice@example.net", "bob@example.org"]);
        assert_eq!(x.trace[0].action, Resolution::Qualified { to: "ops@example.org".into() });
    }

    #[test]
    fn self_reference_keeps_the_address() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "user@example.org user@example.org, other@example.org\n",
                "user@example.org",
                &["user@example.org", "other@example.org"],
            ),
            // Case does not matter, the address stays as written.
            (
                "user@example.org USER@example.org, other@example.org\n",
                "user@example.org",
                &["USER@example.org", "other@example.org"],
            ),
            // Reached again from elsewhere: still final, once.
            ("a@x.net a@x.net, b@x.net\nb@x.net a@x.net, c@x.net\n", "a@x.net", &["a@x.net", "c@x.net"]),
            ("a@x.net b@x.net\nb@x.net b@x.net\n", "a@x.net", &["b@x.net"]),
        ];
        for (table, address, want) in cases {
            let r = rewriter(table, "");
            assert_eq!(expand(&r, address), *want, "{table}");
        }
        let r = rewriter("user@example.org user@example.org, other@example.org\n", "");
        let x = r.expand("user@example.org").unwrap();
        assert!(x.trace.iter().any(|s| s.action == Resolution::SelfReference), "{x}");
    }

    #[test]
    fn loops_are_refused_with_the_chain() {
        let cases: &[(&str, &str, &str)] = &[
            ("a@x.net b@x.net\nb@x.net a@x.net\n", "a@x.net", "alias loop: a@x.net -> b@x.net -> a@x.net"),
            (
                "a@x.net b@x.net\nb@x.net c@x.net\nc@x.net A@X.NET\n",
                "a@x.net",
                "alias loop: a@x.net -> b@x.net -> c@x.net -> A@X.NET",
            ),
            // The loop below the starting point.
            (
                "s@x.net a@x.net\na@x.net b@x.net\nb@x.net a@x.net\n",
                "s@x.net",
                "alias loop: s@x.net -> a@x.net -> b@x.net -> a@x.net",
            ),
            // Through the catch-all.
            ("@a.net x@b.net\n@b.net y@a.net\n", "q@a.net", "alias loop: q@a.net -> x@b.net -> y@a.net -> x@b.net"),
            // Through a bare name qualified with the origin.
            (
                "a@example.org b\nb@example.org a\n",
                "a@example.org",
                "alias loop: a@example.org -> b@example.org -> a@example.org",
            ),
        ];
        for (table, address, want) in cases {
            let r = rewriter(table, "");
            let e = r.expand(address).unwrap_err();
            assert_eq!(e.to_string(), *want, "{table}");
            assert!(e.is_permanent());
        }
    }

    #[test]
    fn diamonds_are_not_loops_and_duplicates_go() {
        let r = rewriter("a@x.net b@x.net, c@x.net\nb@x.net d@x.net\nc@x.net d@X.NET, e@x.net\n", "");
        let x = r.expand("a@x.net").unwrap();
        assert_eq!(x.recipients, ["d@x.net", "e@x.net"]);
        assert!(x.trace.iter().any(|s| s.address == "d@X.NET" && s.action == Resolution::Duplicate), "{x}");
        // Local parts keep their case: different recipients.
        let r = rewriter("a@x.net Bob@x.net, bob@x.net, bob@X.net\n", "");
        assert_eq!(expand(&r, "a@x.net"), ["Bob@x.net", "bob@x.net"]);
    }

    #[test]
    fn depth_limit() {
        // A chain of n aliases: a0 -> a1 -> ... -> an.
        let chain = |n: usize| (0..n).map(|i| format!("a{i}@x.net a{}@x.net\n", i + 1)).collect::<String>();
        let limits = Limits { recursion: 5, expansion: 1000 };
        let r = rewriter(&chain(5), "").with_limits(limits);
        assert_eq!(expand(&r, "a0@x.net"), ["a5@x.net"]);
        let r = rewriter(&chain(6), "").with_limits(limits);
        let e = r.expand("a0@x.net").unwrap_err();
        assert_eq!(e, RewriteError::TooDeep { address: "a0@x.net".into(), limit: 5 });
        assert_eq!(e.to_string(), "unreasonable alias nesting for a0@x.net: more than 5 levels");
        assert!(!e.is_permanent());
        // The default limit, Postfix's 1000.
        let r = rewriter(&chain(1000), "");
        assert_eq!(expand(&r, "a0@x.net"), ["a1000@x.net"]);
        let r = rewriter(&chain(1001), "");
        assert!(matches!(r.expand("a0@x.net"), Err(RewriteError::TooDeep { limit: 1000, .. })));
    }

    #[test]
    fn expansion_limit() {
        let list = |n: usize| (0..n).map(|i| format!("u{i}@x.net")).collect::<Vec<_>>().join(", ");
        let r = rewriter(&format!("all@x.net {}\n", list(1000)), "");
        assert_eq!(expand(&r, "all@x.net").len(), 1000);
        let r = rewriter(&format!("all@x.net {}\n", list(1001)), "");
        let e = r.expand("all@x.net").unwrap_err();
        assert_eq!(e.to_string(), "unreasonable alias expansion for all@x.net: more than 1000 addresses");
        // Fan-out through levels: 40 * 40 = 1600 > 1000.
        let mut t = format!("top@x.net {}\n", (0..40).map(|i| format!("m{i}@x.net")).collect::<Vec<_>>().join(","));
        for i in 0..40 {
            t.push_str(&format!(
                "m{i}@x.net {}\n",
                (0..40).map(|j| format!("l{i}-{j}@x.net")).collect::<Vec<_>>().join(",")
            ));
        }
        let r = rewriter(&t, "");
        assert!(matches!(r.expand("top@x.net"), Err(RewriteError::TooMany { .. })));
    }

    #[test]
    fn local_aliases_for_local_domains() {
        let r = rewriter(
            "virt@example.org postmaster\n",
            "postmaster: root\nroot: admin@example.net, \\root\nteam: \"j smith\", ops@example.net\nself: self, other\n\"j smith\": js@example.net\n",
        );
        let cases: &[(&str, &[&str])] = &[
            ("postmaster@example.org", &["admin@example.net", "root@example.org"]),
            // The `\root` escape keeps the domain being delivered to.
            ("root@mail.example.org", &["admin@example.net", "root@mail.example.org"]),
            ("Postmaster@Mail.Example.Org", &["admin@example.net", "root@example.org"]),
            // Virtual first, then the alias file on its result.
            ("virt@example.org", &["admin@example.net", "root@example.org"]),
            // Quoted names.
            ("team@example.org", &["js@example.net", "ops@example.net"]),
            ("\"j smith\"@example.org", &["js@example.net"]),
            // `self: self, other` keeps the mailbox of the domain asked for.
            ("self@mail.example.org", &["self@mail.example.org", "other@example.org"]),
            // Not a local domain: alias files do not apply.
            ("postmaster@elsewhere.com", &["postmaster@elsewhere.com"]),
            ("nobody@example.org", &["nobody@example.org"]),
        ];
        for (address, want) in cases {
            assert_eq!(expand(&r, address), *want, "{address}");
        }
        let e = rewriter("", "a: b\nb: a\n").expand("a@example.org").unwrap_err();
        assert_eq!(e.to_string(), "alias loop: a@example.org -> b@example.org -> a@example.org");
    }

    #[test]
    fn an_extension_without_an_entry_takes_the_users() {
        let r = rewriter("", "ops: a@x.net\nops+urgent: pager@x.net\n").with_recipient_delimiter("+");
        let final_of = |addr: &str| r.expand(addr).unwrap().recipients;
        assert_eq!(final_of("ops+billing@example.org"), ["a@x.net"]);
        assert_eq!(final_of("ops+urgent@example.org"), ["pager@x.net"]);
        assert_eq!(final_of("other+x@example.org"), ["other+x@example.org"]);
        let plain = rewriter("", "ops: a@x.net\n");
        assert_eq!(plain.expand("ops+billing@example.org").unwrap().recipients, ["ops+billing@example.org"]);
    }

    #[test]
    fn virtual_beats_aliases() {
        let r = rewriter("root@example.org v@example.net\n", "root: a@example.net\n");
        assert_eq!(expand(&r, "root@example.org"), ["v@example.net"]);
        assert_eq!(expand(&r, "root@mail.example.org"), ["a@example.net"]);
    }

    #[test]
    fn several_tables_key_by_key() {
        let first = Table::from_text("first", "@example.org catchall@x.net\n", Syntax::Map).unwrap();
        let second = Table::from_text("second", "a@example.org exact@x.net\n", Syntax::Map).unwrap();
        let r = Rewriter::new("example.org", |_| false).with_virtual_maps(vec![Arc::new(first), Arc::new(second)]);
        assert_eq!(expand(&r, "a@example.org"), ["exact@x.net"]);
        assert_eq!(expand(&r, "b@example.org"), ["catchall@x.net"]);
    }

    #[test]
    fn no_tables_no_change() {
        let r = Rewriter::new("example.org", |_| true);
        assert_eq!(expand(&r, "a@b.c"), ["a@b.c"]);
    }

    #[test]
    fn trace_reads_like_an_explanation() {
        let r = rewriter("root@example.org ops@example.org, root@example.org\nops@example.org a@x.net,b@x.net\n", "");
        let x = r.expand("root@example.org").unwrap();
        let want = "\
root@example.org: virtual alias (hash:/etc/postfix/virtual line 1, key \"root@example.org\") -> ops@example.org, root@example.org
  ops@example.org: virtual alias (hash:/etc/postfix/virtual line 2, key \"ops@example.org\") -> a@x.net, b@x.net
    a@x.net: final recipient
    b@x.net: final recipient
  root@example.org: maps to itself: final recipient
";
        assert_eq!(x.to_string(), want);
        assert_eq!(x.recipients, ["a@x.net", "b@x.net", "root@example.org"]);
    }

    #[test]
    fn splits_addresses() {
        let cases: &[(&str, (&str, Option<&str>))] = &[
            ("a@b", ("a", Some("b"))),
            ("a", ("a", None)),
            ("\"a@b\"@c", ("\"a@b\"", Some("c"))),
            ("\"a@b\"", ("\"a@b\"", None)),
            ("@d", ("", Some("d"))),
        ];
        for (a, want) in cases {
            assert_eq!(split_address(a), *want, "{a}");
        }
    }

    #[test]
    fn include_files_fan_out_and_nest() {
        let dir = tempfile::tempdir().unwrap();
        let staff = dir.path().join("staff");
        let more = dir.path().join("more");
        std::fs::write(&staff, format!("# the staff\nalice, bob@example.net\n\\carol\n:include:{}\n", more.display()))
            .unwrap();
        std::fs::write(&more, "dave\n").unwrap();
        let r = rewriter("", &format!("staff: :include:{}\ncarol: elsewhere@example.net\n", staff.display()));
        let x = r.expand("staff@example.org").unwrap();
        assert_eq!(x.recipients, ["alice@example.org", "bob@example.net", "carol@example.org", "dave@example.org"]);
        let first = x.trace[0].to_string();
        assert!(first.contains(&format!("(listed in :include:{})", staff.display())), "{first}");
        assert!(first.contains(&format!("(listed in :include:{})", more.display())), "{first}");
    }

    #[test]
    fn include_trouble_defers_and_commands_in_includes_bounce() {
        let dir = tempfile::tempdir().unwrap();
        let piped = dir.path().join("piped");
        std::fs::write(&piped, "alice\n|/usr/bin/procmail\n").unwrap();
        let filed = dir.path().join("filed");
        std::fs::write(&filed, "/var/log/archive\n").unwrap();
        let itself = dir.path().join("itself");
        std::fs::write(&itself, format!(":include:{}\n", itself.display())).unwrap();
        let missing = dir.path().join("missing");
        let r = rewriter(
            "",
            &format!(
                "piped: :include:{}\nfiled: :include:{}\nmissing: :include:{}\nitself: :include:{}\n",
                piped.display(),
                filed.display(),
                missing.display(),
                itself.display()
            ),
        );
        let e = r.expand("piped@example.org").unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            format!(
                ":include:{} line 2: mail to command |/usr/bin/procmail is not allowed from an :include: file",
                piped.display()
            )
        );
        let e = r.expand("filed@example.org").unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("mail to file /var/log/archive is not allowed"), "{e}");
        let e = r.expand("missing@example.org").unwrap_err();
        assert!(!e.is_permanent() && e.to_string().contains("No such file"), "{e}");
        let e = r.expand("itself@example.org").unwrap_err();
        assert!(!e.is_permanent() && e.to_string().contains("nested more than 10 deep"), "{e}");
    }

    #[test]
    fn commands_and_files_end_an_alias_unless_not_allowed() {
        let r = rewriter("", "ticket: \"|/bin/intake -q\", ops\narchive: /var/log/archive\n");
        let x = r.expand("ticket@example.org").unwrap();
        assert_eq!(x.recipients, ["ticket@example.org", "ops@example.org"]);
        assert!(x.to_string().contains("ends in |/bin/intake -q: final recipient for local:"), "{x}");
        assert_eq!(expand(&r, "archive@example.org"), ["archive@example.org"]);
        assert_eq!(r.deliveries("ticket@example.org").len(), 1);
        assert!(r.deliveries("ops@example.org").is_empty());
        let strict = r.clone().with_allowed(false, true);
        let e = strict.expand("ticket@example.org").unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("local.allow_mail_to_commands has no alias"), "{e}");
        assert_eq!(expand(&strict, "archive@example.org"), ["archive@example.org"]);
        let e = r.clone().with_allowed(true, false).expand("archive@example.org").unwrap_err();
        assert!(e.to_string().starts_with("hash:/etc/aliases line 2: mail to file /var/log/archive"), "{e}");
    }
}
