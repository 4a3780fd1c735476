//! The conversations of one SMTP session (or one local submission) with
//! its milters, in the order configured, as Postfix holds them: one
//! connection per milter for the whole session, opened at connect, told
//! every phase, closed with QUIT at the end.
//!
//! Each phase goes to every milter still listening; the first refusal
//! (reject, tempfail, a reply code of its own) is the answer and the rest
//! are not asked. A milter that accepts is done: for the session when it
//! accepts the connection or HELO, for the message otherwise. A milter that
//! cannot be reached, does not answer within its timeout or breaks the
//! protocol is dropped with a `warning: milter ADDR: ...` line and counts
//! as `milter.default_action` says, for the rest of the session.
//!
//! Every wait is bounded (`connect_timeout` for the connection and the
//! negotiation, `command_timeout` per envelope phase, `content_timeout` per
//! header, body chunk and end of message) and all of it is async: a milter
//! that hangs holds only its own session.

use super::proto::{BODY_CHUNK, Command, Decoder, Family, Response, Stage, action, flag};
use crate::config::{DefaultAction, Milter, MilterAddr};
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A stream to a milter: TCP or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Macros for one stage, `(name, value)`: `j`, `{client_addr}`, ...
pub(crate) type Macros = Vec<(String, String)>;

/// The milters' answer to one phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Continue,
    /// Reject or tempfail, with the reply the client gets.
    Refuse(Reply),
    /// Accept the message but throw it away.
    Discard,
}

/// The milters' answer at the end of a message: the verdict, and the
/// changes they asked for, in the order asked.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) verdict: Option<Verdict>,
    pub(crate) changes: Vec<Response>,
    /// SMFIR_QUARANTINE's reason: the message goes on hold.
    pub(crate) quarantine: Option<String>,
}

/// One milter's conversation.
struct Link {
    addr: MilterAddr,
    /// `None` once the milter accepted the session or failed.
    stream: Option<Box<dyn Io>>,
    decoder: Decoder,
    /// The actions it asked for at negotiation.
    actions: u32,
    protocol: u32,
    /// The macros it wants per stage (SMFIR_SETSYMLIST); all when absent.
    symlists: Vec<(u32, Vec<String>)>,
    /// It accepted the current message: not asked again until the next.
    done_with_message: bool,
    /// It failed; its default action, for every later phase.
    failed: bool,
}

/// One session's milters.
pub(crate) struct Milters {
    links: Vec<Link>,
    settings: Milter,
    /// A refusal at connect (or a failure treated as one) that answers
    /// every later phase.
    refused: Option<Reply>,
    /// A MAIL was sent and its message neither ended nor aborted: the
    /// next MAIL is preceded by an ABORT, as Postfix sends it.
    in_message: bool,
}

impl Milters {
    /// Connects to `addrs` in order and tells each of the client
    /// (`host`, `family`, the connect macros). Never fails: a milter that
    /// cannot be reached counts as `default_action`.
    pub(crate) async fn connect(
        settings: &Milter,
        addrs: &[MilterAddr],
        host: &str,
        family: Family,
        macros: &Macros,
    ) -> Milters {
        let mut milters = Milters { links: Vec::new(), settings: settings.clone(), refused: None, in_message: false };
        for addr in addrs {
            let mut link = Link {
                addr: addr.clone(),
                stream: None,
                decoder: Decoder::default(),
                actions: 0,
                protocol: 0,
                symlists: Vec::new(),
                done_with_message: false,
                failed: false,
            };
            match tokio::time::timeout(settings.connect_timeout, link.open()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => link.fail(&why),
                Err(_) => link.fail("timeout while connecting and negotiating"),
            }
            milters.links.push(link);
        }
        let command = Command::Connect { host, family };
        let verdict = milters.phase(Stage::Connect, flag::NO_CONNECT, flag::NR_CONNECT, &command, macros).await;
        if let Verdict::Refuse(reply) = verdict {
            milters.refused = Some(reply);
        }
        milters
    }

    pub(crate) async fn helo(&mut self, name: &str, macros: &Macros) -> Verdict {
        self.phase(Stage::Helo, flag::NO_HELO, flag::NR_HELO, &Command::Helo(name), macros).await
    }

    /// MAIL: a new message starts, every milter that accepted the last
    /// one is asked again.
    pub(crate) async fn mail(&mut self, args: &[String], macros: &Macros) -> Verdict {
        if self.in_message {
            self.abort().await;
        }
        for link in &mut self.links {
            link.done_with_message = false;
        }
        self.in_message = true;
        self.phase(Stage::Mail, flag::NO_MAIL, flag::NR_MAIL, &Command::Mail(args), macros).await
    }

    pub(crate) async fn rcpt(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.phase(Stage::Rcpt, flag::NO_RCPT, flag::NR_RCPT, &Command::Rcpt(args), macros).await
    }

    /// The message: DATA, its header fields (`(name, value)`, values as
    /// the milter protocol carries them), the end of the header, the body
    /// in chunks, and the end of the message with its changes.
    pub(crate) async fn message(
        &mut self,
        macros: &Macros,
        fields: &[(String, String)],
        body: &[u8],
        eom_macros: &Macros,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        self.in_message = false;
        let verdict = self.phase(Stage::Data, flag::NO_DATA, flag::NR_DATA, &Command::Data, macros).await;
        if verdict != Verdict::Continue {
            outcome.verdict = Some(verdict);
            return outcome;
        }
        let timeout = self.settings.content_timeout;
        for i in 0..self.links.len() {
            if let Some(verdict) = self.content(i, fields, body, eom_macros, timeout, &mut outcome).await {
                outcome.verdict = Some(verdict);
                return outcome;
            }
        }
        outcome
    }

    /// One milter's part of the message, to its end; a verdict other than
    /// going on ends the message for all of them.
    async fn content(
        &mut self,
        i: usize,
        fields: &[(String, String)],
        body: &[u8],
        eom_macros: &Macros,
        timeout: Duration,
        outcome: &mut Outcome,
    ) -> Option<Verdict> {
        let default = self.settings.default_action;
        let link = &mut self.links[i];
        if link.failed {
            return default_verdict(default);
        }
        if link.stream.is_none() || link.done_with_message {
            return None;
        }
        let result = tokio::time::timeout(timeout, link.content(fields, body, eom_macros, outcome, timeout)).await;
        match result {
            Ok(Ok(Verdict::Continue)) => None,
            Ok(Ok(verdict)) => Some(verdict),
            Ok(Err(why)) => {
                link.fail(&why);
                default_verdict(default)
            }
            Err(_) => {
                link.fail("timeout while sending the message");
                default_verdict(default)
            }
        }
    }

    /// Ends a message that was not completed (RSET, a refusal, a new MAIL
    /// after a failed one): each milter forgets it.
    pub(crate) async fn abort(&mut self) {
        self.in_message = false;
        let timeout = self.settings.command_timeout;
        for link in &mut self.links {
            if link.stream.is_some()
                && let Err(why) = link.send_timed(&Command::Abort, timeout).await
            {
                link.fail(&why);
            }
            link.done_with_message = false;
        }
    }

    /// Ends the session: QUIT to each milter still listening.
    pub(crate) async fn quit(mut self) {
        for link in &mut self.links {
            let _ = link.send_timed(&Command::Quit, Duration::from_secs(1)).await;
            link.stream = None;
        }
    }

    /// Sends one envelope phase to every milter that wants it; the first
    /// refusal answers.
    async fn phase(
        &mut self,
        stage: Stage,
        skip: u32,
        no_reply: u32,
        command: &Command<'_>,
        macros: &Macros,
    ) -> Verdict {
        if let Some(reply) = &self.refused {
            return Verdict::Refuse(reply.clone());
        }
        let timeout = self.settings.command_timeout;
        let default = self.settings.default_action;
        for link in &mut self.links {
            if link.failed {
                match default_verdict(default) {
                    None => continue,
                    Some(verdict) => return verdict,
                }
            }
            if link.stream.is_none() || link.done_with_message || link.protocol & skip != 0 {
                continue;
            }
            let wants_reply = link.protocol & no_reply == 0;
            let asked = async {
                link.send_macros(stage, macros).await?;
                link.send(command).await?;
                if wants_reply { link.answer(timeout).await.map(Some) } else { Ok(None) }
            };
            let answer: Result<Option<Response>, String> = match tokio::time::timeout(timeout, asked).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("timeout after {stage}")),
            };
            let verdict = match answer {
                Ok(None) => continue,
                Ok(Some(response)) => link.verdict(stage, response),
                Err(why) => {
                    link.fail(&why);
                    default_verdict(default)
                }
            };
            match verdict {
                None | Some(Verdict::Continue) => continue,
                Some(verdict) => return verdict,
            }
        }
        Verdict::Continue
    }
}

/// A failed milter's verdict: `None` (skip it) for `accept`.
fn default_verdict(action: DefaultAction) -> Option<Verdict> {
    match action {
        DefaultAction::Accept => None,
        DefaultAction::Tempfail => {
            Some(Verdict::Refuse(Reply::new(451, Enhanced(4, 7, 1), "Service unavailable - try again later")))
        }
        DefaultAction::Reject => Some(Verdict::Refuse(Reply::new(550, Enhanced(5, 7, 1), "Command rejected"))),
    }
}

/// The reply a milter's REJECT, TEMPFAIL or REPLYCODE stands for
/// (Postfix's wording for the first two).
fn refusal(response: &Response) -> Option<Reply> {
    match response {
        Response::Reject => Some(Reply::new(550, Enhanced(5, 7, 1), "Command rejected")),
        Response::Tempfail => Some(Reply::new(451, Enhanced(4, 7, 1), "Service unavailable - try again later")),
        Response::ReplyCode(text) => {
            let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
            // Only a 4xx or 5xx reply is a refusal; anything else is read
            // as the milter most likely meant it: reject.
            match Reply::from_lines(&lines) {
                Some(reply) if (400..600).contains(&reply.code) => Some(reply),
                _ => Some(Reply::new(550, Enhanced(5, 7, 1), "Command rejected")),
            }
        }
        _ => None,
    }
}

impl Link {
    /// Connects and negotiates.
    async fn open(&mut self) -> Result<(), String> {
        let stream: Box<dyn Io> = match &self.addr {
            MilterAddr::Inet { host, port } => {
                Box::new(TcpStream::connect((host.as_str(), *port)).await.map_err(|e| format!("connect: {e}"))?)
            }
            MilterAddr::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(|e| format!("connect: {e}"))?),
        };
        self.stream = Some(stream);
        self.send(&Command::OptNeg { actions: action::ALL, protocol: flag::ALL }).await?;
        match self.read().await? {
            Response::OptNeg { version, actions, protocol, macros } => {
                if version < 2 {
                    return Err(format!("protocol version {version} is not supported"));
                }
                if protocol & !flag::ALL != 0 {
                    return Err(format!("protocol flags {protocol:#x} ask for steps this client does not know"));
                }
                self.actions = actions & action::ALL;
                self.protocol = protocol;
                self.symlists = macros
                    .into_iter()
                    .map(|(stage, list)| (stage, list.split(' ').map(str::to_string).collect()))
                    .collect();
                Ok(())
            }
            other => Err(format!("negotiation answered with {other:?}")),
        }
    }

    /// Drops the conversation after an error, with Postfix's log line.
    fn fail(&mut self, why: &str) {
        tracing::warn!("milter {}: {why}", self.addr);
        self.stream = None;
        self.failed = true;
    }

    async fn send(&mut self, command: &Command<'_>) -> Result<(), String> {
        let Some(stream) = self.stream.as_mut() else { return Err("not connected".into()) };
        let mut packet = Vec::with_capacity(64);
        command.encode(&mut packet);
        stream.write_all(&packet).await.map_err(|e| format!("write: {e}"))
    }

    async fn send_timed(&mut self, command: &Command<'_>, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.send(command)).await {
            Ok(result) => result,
            Err(_) => Err("timeout while writing".into()),
        }
    }

    /// The macros for `stage` the milter wants (all when it named none).
    async fn send_macros(&mut self, stage: Stage, macros: &Macros) -> Result<(), String> {
        let wanted: Macros = match self.symlists.iter().find(|(s, _)| *s == stage as u32) {
            Some((_, names)) => macros.iter().filter(|(n, _)| names.iter().any(|w| macro_is(w, n))).cloned().collect(),
            None => macros.clone(),
        };
        if wanted.is_empty() {
            return Ok(());
        }
        self.send(&Command::Macros { stage, macros: &wanted }).await
    }

    /// The next response.
    async fn read(&mut self) -> Result<Response, String> {
        loop {
            if let Some(response) = self.decoder.next().map_err(|e| e.to_string())? {
                return Ok(response);
            }
            let Some(stream) = self.stream.as_mut() else { return Err("not connected".into()) };
            let mut buf = [0u8; 8192];
            match stream.read(&mut buf).await {
                Ok(0) => return Err("connection closed by the milter".into()),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The final answer to a command, skipping PROGRESS (each of which
    /// gives the milter `timeout` again).
    async fn answer(&mut self, timeout: Duration) -> Result<Response, String> {
        loop {
            match tokio::time::timeout(timeout, self.read()).await {
                Ok(Ok(Response::Progress)) => continue,
                Ok(result) => return result,
                Err(_) => return Err("timeout while waiting for an answer".into()),
            }
        }
    }

    /// What a response to an envelope phase means.
    fn verdict(&mut self, stage: Stage, response: Response) -> Option<Verdict> {
        match response {
            Response::Continue => None,
            Response::Accept => {
                if matches!(stage, Stage::Connect | Stage::Helo) {
                    self.stream = None;
                }
                self.done_with_message = true;
                None
            }
            Response::Discard => Some(Verdict::Discard),
            Response::Shutdown => {
                self.stream = None;
                None
            }
            other => match refusal(&other) {
                Some(reply) => Some(Verdict::Refuse(reply)),
                None => {
                    self.fail(&format!("unexpected {other:?} after {stage}"));
                    None
                }
            },
        }
    }

    /// The message to one milter: DATA already answered, now the header,
    /// the body and the end, gathering the changes it asks for.
    async fn content(
        &mut self,
        fields: &[(String, String)],
        body: &[u8],
        eom_macros: &Macros,
        outcome: &mut Outcome,
        timeout: Duration,
    ) -> Result<Verdict, String> {
        if self.protocol & flag::NO_HEADERS == 0 {
            for (name, value) in fields {
                let value =
                    if self.protocol & flag::HEADER_LEADING_SPACE != 0 { format!(" {value}") } else { value.clone() };
                self.send(&Command::Header { name, value: &value }).await?;
                if self.protocol & flag::NR_HEADER == 0 {
                    let answer = self.answer(timeout).await?;
                    if let Some(v) = self.early(Stage::Eoh, answer) {
                        return Ok(v);
                    }
                }
            }
        }
        if self.protocol & flag::NO_EOH == 0 {
            self.send(&Command::Eoh).await?;
            if self.protocol & flag::NR_EOH == 0 {
                let answer = self.answer(timeout).await?;
                if let Some(v) = self.early(Stage::Eoh, answer) {
                    return Ok(v);
                }
            }
        }
        if self.protocol & flag::NO_BODY == 0 {
            for chunk in body.chunks(BODY_CHUNK) {
                self.send(&Command::Body(chunk)).await?;
                if self.protocol & flag::NR_BODY == 0 {
                    match self.answer(timeout).await? {
                        Response::Skip => break,
                        other => {
                            if let Some(v) = self.early(Stage::Eoh, other) {
                                return Ok(v);
                            }
                        }
                    }
                }
            }
        }
        self.send_macros(Stage::Eom, eom_macros).await?;
        self.send(&Command::Eom).await?;
        self.end(outcome, timeout).await
    }

    /// An answer before the end of the message: `Some` ends the message
    /// for this milter (accepted, or a verdict for all).
    fn early(&mut self, stage: Stage, response: Response) -> Option<Verdict> {
        match self.verdict(stage, response) {
            None if self.done_with_message || self.stream.is_none() => Some(Verdict::Continue),
            other => other,
        }
    }

    /// The answers to the end of the message: changes, then the verdict.
    async fn end(&mut self, outcome: &mut Outcome, timeout: Duration) -> Result<Verdict, String> {
        loop {
            let response = self.answer(timeout).await?;
            let allowed = match &response {
                Response::AddHeader { .. } => self.actions & action::ADD_HEADERS != 0,
                Response::InsertHeader { .. } => self.actions & (action::ADD_HEADERS | action::CHANGE_HEADERS) != 0,
                Response::ChangeHeader { .. } => self.actions & action::CHANGE_HEADERS != 0,
                Response::ReplaceBody(_) => self.actions & action::CHANGE_BODY != 0,
                Response::AddRcpt { args: None, .. } => self.actions & action::ADD_RCPT != 0,
                Response::AddRcpt { args: Some(_), .. } => self.actions & action::ADD_RCPT_PAR != 0,
                Response::DeleteRcpt(_) => self.actions & action::DELETE_RCPT != 0,
                Response::ChangeFrom { .. } => self.actions & action::CHANGE_FROM != 0,
                Response::Quarantine(reason) => {
                    if self.actions & action::QUARANTINE == 0 {
                        return Err("quarantine without having asked for the action".into());
                    }
                    outcome.quarantine = Some(reason.clone());
                    continue;
                }
                _ => {
                    self.done_with_message = true;
                    return Ok(self.verdict(Stage::Eom, response).unwrap_or(Verdict::Continue));
                }
            };
            if !allowed {
                return Err(format!("{response:?} without having asked for the action"));
            }
            outcome.changes.push(response);
        }
    }
}

/// Whether `wanted` (as the milter wrote it, `i` or `{i}`) names `name`.
fn macro_is(wanted: &str, name: &str) -> bool {
    let bare = |s: &str| s.trim_start_matches('{').trim_end_matches('}').to_string();
    bare(wanted) == bare(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_milters_text() {
        let cases = [
            (Response::Reject, "550 5.7.1 Command rejected"),
            (Response::Tempfail, "451 4.7.1 Service unavailable - try again later"),
            (Response::ReplyCode("554 5.7.1 Gtube pattern".into()), "554 5.7.1 Gtube pattern"),
            (Response::ReplyCode("450 4.2.0 Greylisted".into()), "450 4.2.0 Greylisted"),
            (Response::ReplyCode("250 fine".into()), "550 5.7.1 Command rejected"),
        ];
        for (response, expected) in cases {
            assert_eq!(refusal(&response).unwrap().to_string(), expected, "{response:?}");
        }
        let multi = refusal(&Response::ReplyCode("550-5.7.1 one\r\n550 5.7.1 two".into())).unwrap();
        assert_eq!(multi.to_wire(), b"550-5.7.1 one\r\n550 5.7.1 two\r\n");
    }

    /// A milter that negotiates `protocol` and macros for connect only
    /// (`{client_addr}`), answers every command that wants an answer with
    /// CONTINUE (ACCEPT at the end), and returns the command bytes it got.
    async fn fake(listener: tokio::net::TcpListener, protocol: u32) -> Vec<u8> {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let no_reply = [(b'H', flag::NR_HELO), (b'R', flag::NR_RCPT), (b'C', flag::NR_CONNECT), (b'M', flag::NR_MAIL)];
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return seen;
            }
            let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut packet).await.unwrap();
            seen.push(packet[0]);
            let reply: Option<Vec<u8>> = match packet[0] {
                b'O' => {
                    let mut data = vec![b'O'];
                    for n in [6, action::ADD_HEADERS, protocol, Stage::Connect as u32] {
                        data.extend_from_slice(&n.to_be_bytes());
                    }
                    data.extend_from_slice(b"{client_addr}\0");
                    Some(data)
                }
                b'D' => {
                    if packet[1] == b'C' {
                        assert_eq!(&packet[2..], b"{client_addr}\x00192.0.2.1\0", "only the macro asked for");
                    }
                    None
                }
                b'A' => None,
                b'Q' => return seen,
                b'E' => Some(b"a".to_vec()),
                code if no_reply.iter().any(|(c, f)| *c == code && protocol & f != 0) => None,
                _ => Some(b"c".to_vec()),
            };
            if let Some(r) = reply {
                s.write_all(&(r.len() as u32).to_be_bytes()).await.unwrap();
                s.write_all(&r).await.unwrap();
            }
        }
    }

    /// The steps a milter skips are not sent, those it will not answer
    /// are not waited for, and the macros are those it named.
    #[tokio::test]
    async fn flags_and_macro_lists_are_honoured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let protocol = flag::NO_HELO | flag::NR_RCPT | flag::NO_BODY | flag::NO_HEADERS;
        let milter = tokio::spawn(fake(listener, protocol));
        let settings = Milter {
            servers: vec![MilterAddr::Inet { host: "127.0.0.1".into(), port: addr.port() }],
            non_smtpd_milters: Vec::new(),
            default_action: DefaultAction::Tempfail,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            content_timeout: Duration::from_secs(5),
        };
        let macros: Macros = vec![("j".into(), "mx.test".into()), ("{client_addr}".into(), "192.0.2.1".into())];
        let family = Family::Inet("192.0.2.1:2525".parse().unwrap());
        let mut m = Milters::connect(&settings, &settings.servers, "unknown", family, &macros).await;
        assert_eq!(m.helo("client.example", &macros).await, Verdict::Continue);
        assert_eq!(m.mail(&["<a@example.net>".into()], &macros).await, Verdict::Continue);
        assert_eq!(m.rcpt(&["<b@example.org>".into()], &macros).await, Verdict::Continue);
        let fields = [("Subject".to_string(), "hi".to_string())];
        let outcome = m.message(&macros, &fields, b"body\r\n", &macros).await;
        assert_eq!(outcome.verdict, None);
        m.quit().await;
        // No HELO, header or body; DATA and EOH still go.
        assert_eq!(milter.await.unwrap(), b"ODCDMDRDTNDEQ");
    }

    #[test]
    fn macro_names() {
        assert!(macro_is("i", "i"));
        assert!(macro_is("{i}", "i"));
        assert!(macro_is("{client_addr}", "{client_addr}"));
        assert!(!macro_is("j", "i"));
    }
}
