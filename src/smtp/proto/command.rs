//! SMTP command lines → `Command` values, and parse errors → the reply the
//! client should get.
//!
//! This module owns the command grammar (RFC 5321 4.1.1) and the ESMTP
//! parameters posthorn understands: SIZE (RFC 1870), BODY (RFC 6152, RFC
//! 3030), SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461). It does not
//! know the session state: "is this command allowed now" and "was this
//! extension offered" are the session's questions.
//!
//! DSN values (ENVID, ORCPT) are kept as received, still xtext-encoded,
//! because their only use is to be passed on to the next hop or quoted in a
//! bounce, and both want the encoded form.

use super::address::{self, AddressError, PathKind};
use super::reply::{Enhanced, Reply};

/// The command verbs posthorn recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    Expn,
    StartTls,
    Auth,
    Bdat,
}

impl Verb {
    pub(crate) const ALL: [(&'static str, Verb); 14] = [
        ("EHLO", Verb::Ehlo),
        ("HELO", Verb::Helo),
        ("MAIL", Verb::Mail),
        ("RCPT", Verb::Rcpt),
        ("DATA", Verb::Data),
        ("RSET", Verb::Rset),
        ("NOOP", Verb::Noop),
        ("QUIT", Verb::Quit),
        ("VRFY", Verb::Vrfy),
        ("HELP", Verb::Help),
        ("EXPN", Verb::Expn),
        ("STARTTLS", Verb::StartTls),
        ("AUTH", Verb::Auth),
        ("BDAT", Verb::Bdat),
    ];

    /// Matches a verb case-insensitively (RFC 5321 2.4).
    pub(crate) fn parse(word: &[u8]) -> Option<Verb> {
        Verb::ALL.iter().find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(word)).map(|(_, v)| *v)
    }

    /// Lower-case name, as used in log lines (`ehlo=1 mail=1`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Verb::Ehlo => "ehlo",
            Verb::Helo => "helo",
            Verb::Mail => "mail",
            Verb::Rcpt => "rcpt",
            Verb::Data => "data",
            Verb::Rset => "rset",
            Verb::Noop => "noop",
            Verb::Quit => "quit",
            Verb::Vrfy => "vrfy",
            Verb::Help => "help",
            Verb::Expn => "expn",
            Verb::StartTls => "starttls",
            Verb::Auth => "auth",
            Verb::Bdat => "bdat",
        }
    }

    /// The syntax reminder sent with a 501.
    fn usage(self) -> &'static str {
        match self {
            Verb::Ehlo => "EHLO hostname",
            Verb::Helo => "HELO hostname",
            Verb::Mail => "MAIL FROM:<address> [parameters]",
            Verb::Rcpt => "RCPT TO:<address> [parameters]",
            Verb::Data => "DATA",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP [text]",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY address",
            Verb::Help => "HELP [topic]",
            Verb::Expn => "EXPN list",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH mechanism [initial-response]",
            Verb::Bdat => "BDAT size [LAST]",
        }
    }
}

/// BODY= values (RFC 6152 8BITMIME, RFC 3030 BINARYMIME).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// MAIL FROM and its parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailFrom {
    /// Reverse path without `<>`; empty for the null sender.
    pub(crate) sender: String,
    /// SIZE=; values too large for u64 saturate (they are over any limit).
    pub(crate) size: Option<u64>,
    pub(crate) body: Option<BodyType>,
    pub(crate) smtputf8: bool,
    /// RET=, upper-cased: `FULL` or `HDRS`.
    pub(crate) ret: Option<String>,
    /// ENVID=, xtext as received.
    pub(crate) envid: Option<String>,
    /// TRACE=, posthorn's trace id from the previous hop (`XPOSTHORN-TRACE`).
    pub(crate) trace: Option<String>,
}

impl MailFrom {
    /// Whether any ESMTP parameter was given (refused after plain HELO).
    pub(crate) fn has_parameters(&self) -> bool {
        self.size.is_some()
            || self.body.is_some()
            || self.smtputf8
            || self.ret.is_some()
            || self.envid.is_some()
            || self.trace.is_some()
    }
}

/// RCPT TO and its parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptTo {
    /// Forward path without `<>`; `postmaster` for the bare postmaster.
    pub address: String,
    /// NOTIFY=, upper-cased: `NEVER` or a list of SUCCESS, FAILURE, DELAY.
    pub(crate) notify: Option<String>,
    /// ORCPT=, as received, `addr-type;xtext` (`rfc822;user@example.org`).
    pub(crate) orcpt: Option<String>,
}

impl RcptTo {
    pub(crate) fn has_parameters(&self) -> bool {
        self.notify.is_some() || self.orcpt.is_some()
    }

    /// Whether accepting this recipient needs an SMTPUTF8 transaction.
    pub(crate) fn needs_smtputf8(&self) -> bool {
        !self.address.is_ascii() || self.orcpt.as_deref().is_some_and(|o| !o.is_ascii())
    }
}

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Help(Option<String>),
    Expn(String),
    StartTls,
    Auth { mechanism: String, initial_response: Option<String> },
    Bdat { size: u64, last: bool },
}

impl Command {
    pub(crate) fn verb(&self) -> Verb {
        match self {
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Helo(_) => Verb::Helo,
            Command::Mail(_) => Verb::Mail,
            Command::Rcpt(_) => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Vrfy(_) => Verb::Vrfy,
            Command::Help(_) => Verb::Help,
            Command::Expn(_) => Verb::Expn,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
            Command::Bdat { .. } => Verb::Bdat,
        }
    }

    /// Parses one command line without its line ending.
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        let split = line.iter().position(|&c| c == b' ').unwrap_or(line.len());
        let verb = Verb::parse(&line[..split]).ok_or(ParseError { verb: None, error: CommandError::Unknown })?;
        let fail = |error| ParseError { verb: Some(verb), error };
        let args = std::str::from_utf8(&line[split..]).map_err(|_| fail(CommandError::NotUtf8))?;
        // Be lenient about extra spaces between words and at the end of the
        // line: they are a common client sloppiness and never ambiguous.
        let args = args.trim_matches(' ');
        parse_args(verb, args).map_err(fail)
    }
}

/// A command that could not be parsed: the verb when it was recognised (for
/// the per-verb counters in the disconnect log line) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    pub(crate) verb: Option<Verb>,
    pub(crate) error: CommandError,
}

impl ParseError {
    pub(crate) fn reply(&self) -> Reply {
        self.error.reply(self.verb)
    }
}

/// Why a command line was refused; each maps to one reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandError {
    #[error("command not recognized")]
    Unknown,
    #[error("command is not valid UTF-8")]
    NotUtf8,
    #[error("syntax error")]
    Syntax,
    /// A known parameter with a bad value; `name` is validated as an
    /// esmtp-keyword, so it is safe to echo.
    #[error("bad {name} parameter: {reason}")]
    BadParameter { name: String, reason: &'static str },
    #[error("malformed parameter")]
    MalformedParameter,
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
    /// A BDAT whose size is a sound number but whose rest is not: the
    /// client still sends the `size` octets it announced, and the session
    /// must read them to stay in step.
    #[error("syntax error")]
    ChunkSyntax { size: u64 },
}

impl CommandError {
    /// The reply for this error (RFC 5321 4.2.2 codes, RFC 3463 enhanced).
    pub(crate) fn reply(&self, verb: Option<Verb>) -> Reply {
        use CommandError::*;
        match self {
            Unknown => Reply::new(500, Enhanced(5, 5, 2), "Error: command not recognized"),
            NotUtf8 => Reply::new(500, Enhanced(5, 5, 2), "Error: command is not valid UTF-8"),
            Syntax | ChunkSyntax { .. } => {
                let usage = verb.map_or("command", Verb::usage);
                Reply::new(501, Enhanced(5, 5, 4), format!("Syntax: {usage}"))
            }
            BadParameter { name, reason } => {
                Reply::new(501, Enhanced(5, 5, 4), format!("Bad {name} parameter: {reason}"))
            }
            MalformedParameter => Reply::new(501, Enhanced(5, 5, 4), "Malformed parameter"),
            UnsupportedParameter(name) => Reply::new(555, Enhanced(5, 5, 4), format!("Unsupported parameter {name}")),
            BadSender(e) => Reply::new(501, Enhanced(5, 1, 7), format!("Bad sender address syntax: {e}")),
            BadRecipient(e) => Reply::new(501, Enhanced(5, 1, 3), format!("Bad recipient address syntax: {e}")),
            NeedsSmtpUtf8 => Reply::new(553, Enhanced(5, 6, 7), "Non-ASCII address requires SMTPUTF8"),
        }
    }
}

fn parse_args(verb: Verb, args: &str) -> Result<Command, CommandError> {
    let none = |cmd: Command| if args.is_empty() { Ok(cmd) } else { Err(CommandError::Syntax) };
    let some = || if args.is_empty() { Err(CommandError::Syntax) } else { Ok(args.to_string()) };
    match verb {
        Verb::Ehlo => Ok(Command::Ehlo(hello_name(args)?)),
        Verb::Helo => Ok(Command::Helo(hello_name(args)?)),
        Verb::Mail => mail(args).map(Command::Mail),
        Verb::Rcpt => rcpt(args).map(Command::Rcpt),
        Verb::Data => none(Command::Data),
        Verb::Rset => none(Command::Rset),
        // RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        Verb::Noop => Ok(Command::Noop),
        Verb::Quit => none(Command::Quit),
        Verb::Vrfy => some().map(Command::Vrfy),
        Verb::Expn => some().map(Command::Expn),
        Verb::Help => Ok(Command::Help(some().ok())),
        Verb::StartTls => none(Command::StartTls),
        Verb::Auth => auth(args),
        Verb::Bdat => bdat(args),
    }
}

/// The EHLO/HELO argument. Deliberately lenient: clients send all sorts of
/// names (`localhost.localdomain`, `my_host`, `[10.0.0.1]`) and refusing
/// them gains nothing; the name is only recorded for the Received header.
fn hello_name(args: &str) -> Result<String, CommandError> {
    let name = args.split(' ').next().unwrap_or("");
    if name.is_empty() || name.len() > address::MAX_DOMAIN || name.chars().any(char::is_control) {
        return Err(CommandError::Syntax);
    }
    Ok(name.to_string())
}

/// Splits `args` after `keyword` (`FROM:`/`TO:`), tolerating spaces after
/// the colon as many clients send them.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// A trace id: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub(crate) fn is_trace_id(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn mail(args: &str) -> Result<MailFrom, CommandError> {
    let rest = strip_keyword(args, "FROM:").ok_or(CommandError::Syntax)?;
    let (sender, rest) = address::parse_path(rest, PathKind::Reverse).map_err(CommandError::BadSender)?;
    let mut mail = MailFrom { sender, ..MailFrom::default() };
    for (name, value) in parameters(rest)? {
        let upper = name.to_ascii_uppercase();
        let bad = |reason| CommandError::BadParameter { name: upper.clone(), reason };
        let dup = match upper.as_str() {
            "SIZE" => mail.size.replace(size_value(value).ok_or_else(|| bad("expected a number"))?).is_some(),
            "BODY" => mail.body.replace(body_value(value).ok_or_else(|| bad("expected 7BIT or 8BITMIME"))?).is_some(),
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(bad("takes no value"));
                }
                std::mem::replace(&mut mail.smtputf8, true)
            }
            "RET" => {
                let v = value.map(str::to_ascii_uppercase).filter(|v| v == "FULL" || v == "HDRS");
                mail.ret.replace(v.ok_or_else(|| bad("expected FULL or HDRS"))?).is_some()
            }
            "ENVID" => {
                let v = value.filter(|v| v.len() <= 100 && is_xtext(v, false));
                mail.envid.replace(v.ok_or_else(|| bad("expected xtext of at most 100 characters"))?.into()).is_some()
            }
            "TRACE" => {
                let v = value.filter(|v| is_trace_id(v));
                mail.trace.replace(v.ok_or_else(|| bad("expected a trace id"))?.into()).is_some()
            }
            _ => return Err(CommandError::UnsupportedParameter(upper)),
        };
        if dup {
            return Err(bad("given twice"));
        }
    }
    if !mail.sender.is_ascii() && !mail.smtputf8 {
        return Err(CommandError::NeedsSmtpUtf8);
    }
    Ok(mail)
}

fn rcpt(args: &str) -> Result<RcptTo, CommandError> {
    let rest = strip_keyword(args, "TO:").ok_or(CommandError::Syntax)?;
    let (address, rest) = address::parse_path(rest, PathKind::Forward).map_err(CommandError::BadRecipient)?;
    let mut rcpt = RcptTo { address, ..RcptTo::default() };
    for (name, value) in parameters(rest)? {
        let upper = name.to_ascii_uppercase();
        let bad = |reason| CommandError::BadParameter { name: upper.clone(), reason };
        let dup = match upper.as_str() {
            "NOTIFY" => {
                let v = value.and_then(notify_value).ok_or_else(|| bad("expected NEVER or SUCCESS,FAILURE,DELAY"))?;
                rcpt.notify.replace(v).is_some()
            }
            "ORCPT" => {
                let v = value.filter(|v| orcpt_ok(v)).ok_or_else(|| bad("expected addr-type;xtext"))?;
                rcpt.orcpt.replace(v.to_string()).is_some()
            }
            _ => return Err(CommandError::UnsupportedParameter(upper)),
        };
        if dup {
            return Err(bad("given twice"));
        }
    }
    Ok(rcpt)
}

/// Splits what follows a path into `keyword[=value]` pairs (RFC 5321
/// 4.1.2 esmtp-param), after checking that the path was followed by a space.
fn parameters(rest: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax);
    }
    let mut out = Vec::new();
    for word in rest.split(' ').filter(|w| !w.is_empty()) {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let name_ok = name.len() <= 32
            && name.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        // esmtp-value: printable ASCII except `=`, plus UTF-8 (RFC 6531).
        let value_ok =
            value.is_none_or(|v| !v.is_empty() && v.bytes().all(|c| (33..=126).contains(&c) && c != b'=' || c >= 0x80));
        if !name_ok {
            return Err(CommandError::MalformedParameter);
        }
        if !value_ok {
            // The keyword is sound, so it can be named (and echoed safely).
            return Err(CommandError::BadParameter { name: name.to_ascii_uppercase(), reason: "malformed value" });
        }
        out.push((name, value));
    }
    Ok(out)
}

fn size_value(value: Option<&str>) -> Option<u64> {
    let v = value?;
    if v.is_empty() || v.len() > 40 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // More digits than u64 holds is still a valid number, just too big.
    Some(v.parse().unwrap_or(u64::MAX))
}

fn body_value(value: Option<&str>) -> Option<BodyType> {
    match value?.to_ascii_uppercase().as_str() {
        "7BIT" => Some(BodyType::SevenBit),
        "8BITMIME" => Some(BodyType::EightBitMime),
        "BINARYMIME" => Some(BodyType::BinaryMime),
        _ => None,
    }
}

/// NOTIFY=NEVER or a non-empty set of SUCCESS, FAILURE, DELAY (RFC 3461 4.1).
pub(crate) fn notify_value(value: &str) -> Option<String> {
    let upper = value.to_ascii_uppercase();
    if upper == "NEVER" {
        return Some(upper);
    }
    let mut seen = Vec::new();
    for word in upper.split(',') {
        if !matches!(word, "SUCCESS" | "FAILURE" | "DELAY") || seen.contains(&word) {
            return None;
        }
        seen.push(word);
    }
    Some(upper)
}

/// ORCPT=addr-type;xtext (RFC 3461 4.2), at most 500 characters. UTF-8 is
/// let through for RFC 6533's utf-8-addr-xtext; the session then requires
/// SMTPUTF8 for it.
fn orcpt_ok(value: &str) -> bool {
    let Some((kind, addr)) = value.split_once(';') else { return false };
    let atom = !kind.is_empty() && kind.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    value.len() <= 500 && atom && !addr.is_empty() && is_xtext(addr, true)
}

/// Encodes `value` as RFC 3461 xtext: `+HH` for `+`, `=` and every byte
/// outside printable ASCII (`sendmail -V` takes the id as plain text).
pub(crate) fn xtext_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// RFC 3461 xtext: printable ASCII except `+` and `=`, with `+HH` escapes.
/// Lower-case hex is accepted: it is unambiguous and some clients send it.
pub(crate) fn is_xtext(value: &str, allow_utf8: bool) -> bool {
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            c if c >= 0x80 && allow_utf8 => i += 1,
            _ => return false,
        }
    }
    true
}

fn auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(CommandError::Syntax)?;
    let initial_response = words.next().map(str::to_string);
    if words.next().is_some() || !mechanism.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        return Err(CommandError::Syntax);
    }
    Ok(Command::Auth { mechanism: mechanism.to_ascii_uppercase(), initial_response })
}

/// `BDAT size [LAST]` (RFC 3030 2). A size that is not a number, or too
/// big for a u64, is a plain syntax error: how many octets follow is then
/// unknown. A sound size with anything wrong after it is `ChunkSyntax`.
fn bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next().filter(|w| w.len() <= 20 && w.bytes().all(|c| c.is_ascii_digit()));
    let size = size.and_then(|w| w.parse().ok()).ok_or(CommandError::Syntax)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::ChunkSyntax { size }),
    };
    if words.next().is_some() {
        return Err(CommandError::ChunkSyntax { size });
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::CommandError::*;
    use super::*;

    fn mail_from(sender: &str) -> MailFrom {
        MailFrom { sender: sender.into(), ..MailFrom::default() }
    }
    fn rcpt_to(address: &str) -> RcptTo {
        RcptTo { address: address.into(), ..RcptTo::default() }
    }
    fn bad(name: &str, reason: &'static str) -> CommandError {
        BadParameter { name: name.into(), reason }
    }

    #[test]
    fn simple_commands_table() {
        type Case<'a> = (&'a [u8], Result<Command, (Option<Verb>, CommandError)>);
        let cases: Vec<Case> = vec![
            (b"EHLO client.example", Ok(Command::Ehlo("client.example".into()))),
            (b"ehlo client.example", Ok(Command::Ehlo("client.example".into()))),
            (b"EhLo [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]".into()))),
            (b"EHLO  my_host  ", Ok(Command::Ehlo("my_host".into()))),
            (b"HELO client", Ok(Command::Helo("client".into()))),
            (b"HELO client extra words", Ok(Command::Helo("client".into()))),
            (b"EHLO", Err((Some(Verb::Ehlo), Syntax))),
            (b"HELO ", Err((Some(Verb::Helo), Syntax))),
            (b"EHLO a\tb", Err((Some(Verb::Ehlo), Syntax))),
            (b"DATA", Ok(Command::Data)),
            (b"data ", Ok(Command::Data)),
            (b"DATA now", Err((Some(Verb::Data), Syntax))),
            (b"RSET", Ok(Command::Rset)),
            (b"RSET x", Err((Some(Verb::Rset), Syntax))),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything at all", Ok(Command::Noop)),
            (b"QUIT", Ok(Command::Quit)),
            (b"QUIT now", Err((Some(Verb::Quit), Syntax))),
            (b"VRFY root", Ok(Command::Vrfy("root".into()))),
            (b"VRFY", Err((Some(Verb::Vrfy), Syntax))),
            (b"EXPN staff", Ok(Command::Expn("staff".into()))),
            (b"HELP", Ok(Command::Help(None))),
            (b"HELP MAIL", Ok(Command::Help(Some("MAIL".into())))),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"STARTTLS x", Err((Some(Verb::StartTls), Syntax))),
            (b"AUTH plain", Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: None })),
            (
                b"AUTH PLAIN AGZvbwBiYXI=",
                Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: Some("AGZvbwBiYXI=".into()) }),
            ),
            (b"AUTH", Err((Some(Verb::Auth), Syntax))),
            (b"AUTH PLAIN a b", Err((Some(Verb::Auth), Syntax))),
            (b"BDAT 1000", Ok(Command::Bdat { size: 1000, last: false })),
            (b"BDAT 10", Ok(Command::Bdat { size: 10, last: false })),
            (b"BDAT 10 LAST", Ok(Command::Bdat { size: 10, last: true })),
            (b"bdat 0 last", Ok(Command::Bdat { size: 0, last: true })),
            (b"BDAT 0 last", Ok(Command::Bdat { size: 0, last: true })),
            (b"BDAT  7   LAST ", Ok(Command::Bdat { size: 7, last: true })),
            (b"BDAT 007", Ok(Command::Bdat { size: 7, last: false })),
            (b"BDAT 18446744073709551615", Ok(Command::Bdat { size: u64::MAX, last: false })),
            (b"BDAT", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT ", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT x", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT LAST", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT -1", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT +1", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT 1k", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT 18446744073709551616", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT 99999999999999999999999", Err((Some(Verb::Bdat), Syntax))),
            (b"BDAT 10 MORE", Err((Some(Verb::Bdat), ChunkSyntax { size: 10 }))),
            (b"BDAT 10 FIRST", Err((Some(Verb::Bdat), ChunkSyntax { size: 10 }))),
            (b"BDAT 10 LAST now", Err((Some(Verb::Bdat), ChunkSyntax { size: 10 }))),
            (b"BDAT 0 LASTX", Err((Some(Verb::Bdat), ChunkSyntax { size: 0 }))),
            // Unknown verbs and garbage.
            (b"", Err((None, Unknown))),
            (b"FOO", Err((None, Unknown))),
            (b"MAILFROM:<a@b>", Err((None, Unknown))),
            (b" EHLO x", Err((None, Unknown))),
            (b"EHLOx", Err((None, Unknown))),
            (b"GET / HTTP/1.1", Err((None, Unknown))),
            (b"\xff\xfe", Err((None, Unknown))),
            (b"EHLO \xff", Err((Some(Verb::Ehlo), NotUtf8))),
        ];
        for (line, expected) in cases {
            let got = Command::parse(line).map_err(|e| (e.verb, e.error));
            assert_eq!(got, expected, "line {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn mail_table() {
        let full = MailFrom {
            sender: "a@b.example".into(),
            size: Some(1000),
            body: Some(BodyType::EightBitMime),
            smtputf8: false,
            ret: Some("HDRS".into()),
            envid: Some("QQ+2B314".into()),
            trace: None,
        };
        let cases: Vec<(&str, Result<MailFrom, CommandError>)> = vec![
            ("MAIL FROM:<a@b.example>", Ok(mail_from("a@b.example"))),
            ("mail from:<a@b.example>", Ok(mail_from("a@b.example"))),
            ("MAIL FROM: <a@b.example>", Ok(mail_from("a@b.example"))),
            ("MAIL FROM:<a@b.example>  ", Ok(mail_from("a@b.example"))),
            ("MAIL FROM:<>", Ok(mail_from(""))),
            ("MAIL FROM:<@relay.example:a@b.example>", Ok(mail_from("a@b.example"))),
            ("MAIL FROM:<a@b.example> SIZE=1000 BODY=8bitmime RET=hdrs ENVID=QQ+2B314", Ok(full)),
            ("MAIL FROM:<a@b.example> size=0", Ok(MailFrom { size: Some(0), ..mail_from("a@b.example") })),
            (
                "MAIL FROM:<a@b.example> SIZE=99999999999999999999999",
                Ok(MailFrom { size: Some(u64::MAX), ..mail_from("a@b.example") }),
            ),
            ("MAIL FROM:<> BODY=7BIT", Ok(MailFrom { body: Some(BodyType::SevenBit), ..mail_from("") })),
            ("MAIL FROM:<> BODY=BINARYMIME", Ok(MailFrom { body: Some(BodyType::BinaryMime), ..mail_from("") })),
            ("MAIL FROM:<> RET=FULL", Ok(MailFrom { ret: Some("FULL".into()), ..mail_from("") })),
            ("MAIL FROM:<jø@b.example> SMTPUTF8", Ok(MailFrom { smtputf8: true, ..mail_from("jø@b.example") })),
            ("MAIL FROM:<a@b.example> smtputf8", Ok(MailFrom { smtputf8: true, ..mail_from("a@b.example") })),
            // Structure.
            ("MAIL", Err(Syntax)),
            ("MAIL TO:<a@b>", Err(Syntax)),
            ("MAIL FROM", Err(Syntax)),
            ("MAIL FROM:", Err(BadSender(AddressError::MissingAngle))),
            ("MAIL FROM:a@b.example", Err(BadSender(AddressError::MissingAngle))),
            ("MAIL FROM:<a@b.example", Err(BadSender(AddressError::Unterminated))),
            ("MAIL FROM:<a b@c>", Err(BadSender(AddressError::BadLocalPart))),
            ("MAIL FROM:<postmaster>", Err(BadSender(AddressError::MissingDomain))),
            ("MAIL FROM:<a@b.example>SIZE=10", Err(Syntax)),
            ("MAIL FROM:<jø@b.example>", Err(NeedsSmtpUtf8)),
            ("MAIL FROM:<a@bø.example>", Err(NeedsSmtpUtf8)),
            // Parameters.
            ("MAIL FROM:<> SIZE", Err(bad("SIZE", "expected a number"))),
            ("MAIL FROM:<> SIZE=", Err(BadParameter { name: "SIZE".into(), reason: "malformed value" })),
            ("MAIL FROM:<> SIZE=-1", Err(bad("SIZE", "expected a number"))),
            ("MAIL FROM:<> SIZE=1k", Err(bad("SIZE", "expected a number"))),
            ("MAIL FROM:<> SIZE=1 SIZE=2", Err(bad("SIZE", "given twice"))),
            ("MAIL FROM:<> BODY=8BIT", Err(bad("BODY", "expected 7BIT or 8BITMIME"))),
            ("MAIL FROM:<> SMTPUTF8=yes", Err(bad("SMTPUTF8", "takes no value"))),
            ("MAIL FROM:<> SMTPUTF8 SMTPUTF8", Err(bad("SMTPUTF8", "given twice"))),
            ("MAIL FROM:<> RET=BODY", Err(bad("RET", "expected FULL or HDRS"))),
            ("MAIL FROM:<> TRACE=Q1a2.b-c_", Ok(MailFrom { trace: Some("Q1a2.b-c_".into()), ..mail_from("") })),
            ("MAIL FROM:<> TRACE=a/b", Err(bad("TRACE", "expected a trace id"))),
            ("MAIL FROM:<> ENVID=a+zz", Err(bad("ENVID", "expected xtext of at most 100 characters"))),
            ("MAIL FROM:<> ENVID=a+2", Err(bad("ENVID", "expected xtext of at most 100 characters"))),
            ("MAIL FROM:<> AUTH=<>", Err(UnsupportedParameter("AUTH".into()))),
            ("MAIL FROM:<> X-FOO=bar", Err(UnsupportedParameter("X-FOO".into()))),
            ("MAIL FROM:<> =x", Err(MalformedParameter)),
            ("MAIL FROM:<> A=b=c", Err(BadParameter { name: "A".into(), reason: "malformed value" })),
            ("MAIL FROM:<> -X", Err(MalformedParameter)),
            ("MAIL FROM:<> X_Y", Err(MalformedParameter)),
        ];
        let long_envid = format!("MAIL FROM:<> ENVID={}", "x".repeat(101));
        let mut cases = cases;
        cases.push((&long_envid, Err(bad("ENVID", "expected xtext of at most 100 characters"))));
        for (line, expected) in cases {
            let got = match Command::parse(line.as_bytes()) {
                Ok(Command::Mail(m)) => Ok(m),
                Ok(other) => panic!("{line:?} parsed as {other:?}"),
                Err(e) => {
                    assert_eq!(e.verb, Some(Verb::Mail), "{line:?}");
                    Err(e.error)
                }
            };
            assert_eq!(got, expected, "line {line:?}");
        }
    }

    #[test]
    fn rcpt_table() {
        let cases: Vec<(&str, Result<RcptTo, CommandError>)> = vec![
            ("RCPT TO:<u@example.org>", Ok(rcpt_to("u@example.org"))),
            ("rcpt to: <u@example.org>", Ok(rcpt_to("u@example.org"))),
            ("RCPT TO:<Postmaster>", Ok(rcpt_to("postmaster"))),
            ("RCPT TO:<@hop.example:u@example.org>", Ok(rcpt_to("u@example.org"))),
            ("RCPT TO:<jø@example.org>", Ok(rcpt_to("jø@example.org"))),
            (
                "RCPT TO:<u@example.org> NOTIFY=success,delay ORCPT=rfc822;u+40example.org",
                Ok(RcptTo {
                    address: "u@example.org".into(),
                    notify: Some("SUCCESS,DELAY".into()),
                    orcpt: Some("rfc822;u+40example.org".into()),
                }),
            ),
            (
                "RCPT TO:<u@example.org> ORCPT=rfc822;u@example.org",
                Ok(RcptTo { orcpt: Some("rfc822;u@example.org".into()), ..rcpt_to("u@example.org") }),
            ),
            (
                "RCPT TO:<u@example.org> NOTIFY=NEVER",
                Ok(RcptTo { notify: Some("NEVER".into()), ..rcpt_to("u@example.org") }),
            ),
            ("RCPT", Err(Syntax)),
            ("RCPT FROM:<u@example.org>", Err(Syntax)),
            ("RCPT TO:<>", Err(BadRecipient(AddressError::Empty))),
            ("RCPT TO:<root>", Err(BadRecipient(AddressError::MissingDomain))),
            ("RCPT TO:u@example.org", Err(BadRecipient(AddressError::MissingAngle))),
            ("RCPT TO:<u@example.org", Err(BadRecipient(AddressError::Unterminated))),
            ("RCPT TO:<u@exa mple.org>", Err(BadRecipient(AddressError::BadDomain))),
            (
                "RCPT TO:<u@example.org> NOTIFY=NEVER,SUCCESS",
                Err(bad("NOTIFY", "expected NEVER or SUCCESS,FAILURE,DELAY")),
            ),
            (
                "RCPT TO:<u@example.org> NOTIFY=SUCCESS,SUCCESS",
                Err(bad("NOTIFY", "expected NEVER or SUCCESS,FAILURE,DELAY")),
            ),
            ("RCPT TO:<u@example.org> NOTIFY=SOMETIMES", Err(bad("NOTIFY", "expected NEVER or SUCCESS,FAILURE,DELAY"))),
            ("RCPT TO:<u@example.org> NOTIFY", Err(bad("NOTIFY", "expected NEVER or SUCCESS,FAILURE,DELAY"))),
            ("RCPT TO:<u@example.org> NOTIFY=NEVER NOTIFY=NEVER", Err(bad("NOTIFY", "given twice"))),
            ("RCPT TO:<u@example.org> ORCPT=u@example.org", Err(bad("ORCPT", "expected addr-type;xtext"))),
            ("RCPT TO:<u@example.org> ORCPT=rfc822;", Err(bad("ORCPT", "expected addr-type;xtext"))),
            ("RCPT TO:<u@example.org> ORCPT=;u@x", Err(bad("ORCPT", "expected addr-type;xtext"))),
            ("RCPT TO:<u@example.org> ORCPT=rfc822;a+g0", Err(bad("ORCPT", "expected addr-type;xtext"))),
            ("RCPT TO:<u@example.org> SIZE=10", Err(UnsupportedParameter("SIZE".into()))),
        ];
        for (line, expected) in cases {
            let got = match Command::parse(line.as_bytes()) {
                Ok(Command::Rcpt(r)) => Ok(r),
                Ok(other) => panic!("{line:?} parsed as {other:?}"),
                Err(e) => {
                    assert_eq!(e.verb, Some(Verb::Rcpt), "{line:?}");
                    Err(e.error)
                }
            };
            assert_eq!(got, expected, "line {line:?}");
        }
    }

    #[test]
    fn smtputf8_requirement_of_recipients() {
        let cases = [
            ("RCPT TO:<u@example.org>", false),
            ("RCPT TO:<jø@example.org>", true),
            ("RCPT TO:<u@例子.广告>", true),
            ("RCPT TO:<u@example.org> ORCPT=utf-8;jø@example.org", true),
        ];
        for (line, expected) in cases {
            let Ok(Command::Rcpt(r)) = Command::parse(line.as_bytes()) else { panic!("{line}") };
            assert_eq!(r.needs_smtputf8(), expected, "{line}");
        }
    }

    #[test]
    fn error_replies() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"FOO", "500 5.5.2 Error: command not recognized"),
            (b"EHLO \xff", "500 5.5.2 Error: command is not valid UTF-8"),
            (b"MAIL TO:<a@b>", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
            (b"DATA x", "501 5.5.4 Syntax: DATA"),
            (b"BDAT x", "501 5.5.4 Syntax: BDAT size [LAST]"),
            (b"BDAT 5 MORE", "501 5.5.4 Syntax: BDAT size [LAST]"),
            (b"MAIL FROM:<> SIZE=x", "501 5.5.4 Bad SIZE parameter: expected a number"),
            (b"MAIL FROM:<> FOO", "555 5.5.4 Unsupported parameter FOO"),
            (b"MAIL FROM:<a b>", "501 5.1.7 Bad sender address syntax: invalid local part"),
            (b"RCPT TO:<a@b c>", "501 5.1.3 Bad recipient address syntax: invalid domain"),
            ("MAIL FROM:<ø@b>".as_bytes(), "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
        ];
        for (line, expected) in cases {
            let reply = Command::parse(line).unwrap_err().reply();
            assert_eq!(reply.to_string(), expected, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn parameter_flags() {
        let Ok(Command::Mail(m)) = Command::parse(b"MAIL FROM:<a@b>") else { panic!() };
        assert!(!m.has_parameters());
        let Ok(Command::Mail(m)) = Command::parse(b"MAIL FROM:<a@b> BODY=7BIT") else { panic!() };
        assert!(m.has_parameters());
        let Ok(Command::Rcpt(r)) = Command::parse(b"RCPT TO:<a@b> NOTIFY=NEVER") else { panic!() };
        assert!(r.has_parameters());
    }

    #[test]
    fn verbs_round_trip() {
        for (name, verb) in Verb::ALL {
            assert_eq!(Verb::parse(name.as_bytes()), Some(verb));
            assert_eq!(Verb::parse(verb.name().as_bytes()), Some(verb));
        }
    }

    /// Random lines built from pieces of real commands never panic, and
    /// every error maps to a 5xx reply.
    #[test]
    fn random_lines_never_panic() {
        let pieces = [
            "MAIL", "RCPT", "EHLO", "DATA", " ", "FROM:", "TO:", "<", ">", "@", ".", "a", "\"", "\\", "[", "]",
            "IPv6:", "::1", "1.2.3.4", "=", "SIZE", "BODY", "8BITMIME", "NOTIFY", "ORCPT", "rfc822;", "+2B", ",", ":",
            "ø", "用", "\t", "-",
        ];
        let mut rng = fastrand::Rng::with_seed(6531);
        for _ in 0..20000 {
            let n = rng.usize(1..12);
            let line: String = (0..n).map(|_| *rng.choice(&pieces).unwrap()).collect();
            if let Err(e) = Command::parse(line.as_bytes()) {
                let reply = e.reply();
                assert!(reply.code >= 500 && reply.enhanced.is_some(), "{line:?} -> {reply}");
                assert!(!reply.to_string().contains(['\r', '\n']), "{line:?}");
            }
        }
    }
}
