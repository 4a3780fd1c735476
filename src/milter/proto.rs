//! The Sendmail milter protocol, version 6, without I/O: the commands the
//! MTA sends encoded to bytes, the milter's responses decoded from bytes.
//!
//! Every packet is a 32-bit big-endian length (the command byte included),
//! one command byte, and its data: NUL-terminated strings and 32-bit
//! integers. The constants are those of Sendmail's `mfdef.h`, which Postfix
//! (`milter8.c`), rspamd and OpenDKIM all use.

use std::fmt;

/// The protocol version offered (Postfix offers 6 too).
pub(crate) const VERSION: u32 = 6;

/// The largest packet accepted from a milter. A body replacement comes in
/// chunks of at most 64 KiB (no larger size is negotiated); anything much
/// bigger is a broken or hostile peer.
pub(crate) const MAX_PACKET: usize = 1 << 20;

/// The largest body chunk sent (`MILTER_CHUNK_SIZE`).
pub(crate) const BODY_CHUNK: usize = 65535;

/// Modification actions (`SMFIF_*`): what a milter may ask for at the end
/// of the message. All are offered.
pub(crate) mod action {
    pub(crate) const ADD_HEADERS: u32 = 0x01;
    pub(crate) const CHANGE_BODY: u32 = 0x02;
    pub(crate) const ADD_RCPT: u32 = 0x04;
    pub(crate) const DELETE_RCPT: u32 = 0x08;
    pub(crate) const CHANGE_HEADERS: u32 = 0x10;
    pub(crate) const QUARANTINE: u32 = 0x20;
    pub(crate) const CHANGE_FROM: u32 = 0x40;
    pub(crate) const ADD_RCPT_PAR: u32 = 0x80;
    /// The above and SMFIF_SETSYMLIST (0x100): the milter may name the
    /// macros it wants per stage.
    pub(crate) const ALL: u32 = 0x1ff;
}

/// Protocol flags (`SMFIP_*`): the steps a milter does not want to see
/// (`NO_*`) and those it will not answer (`NR_*`).
pub(crate) mod flag {
    pub(crate) const NO_CONNECT: u32 = 0x1;
    pub(crate) const NO_HELO: u32 = 0x2;
    pub(crate) const NO_MAIL: u32 = 0x4;
    pub(crate) const NO_RCPT: u32 = 0x8;
    pub(crate) const NO_BODY: u32 = 0x10;
    pub(crate) const NO_HEADERS: u32 = 0x20;
    pub(crate) const NO_EOH: u32 = 0x40;
    pub(crate) const NR_HEADER: u32 = 0x80;
    pub(crate) const NO_DATA: u32 = 0x200;
    pub(crate) const NR_CONNECT: u32 = 0x1000;
    pub(crate) const NR_HELO: u32 = 0x2000;
    pub(crate) const NR_MAIL: u32 = 0x4000;
    pub(crate) const NR_RCPT: u32 = 0x8000;
    pub(crate) const NR_DATA: u32 = 0x10000;
    pub(crate) const NR_EOH: u32 = 0x40000;
    pub(crate) const NR_BODY: u32 = 0x80000;
    /// Header values are sent with their leading space.
    pub(crate) const HEADER_LEADING_SPACE: u32 = 0x100000;
    /// Everything this client can honour: the above, and the flags for
    /// the steps it never sends (unknown commands: 0x100, 0x20000), for
    /// SMFIR_SKIP (0x400) and for rejected recipients (0x800, which are
    /// not sent: the milter then simply does not see them).
    pub(crate) const ALL: u32 = 0x1fffff;
}

/// The stages a milter may name in SMFIR_SETSYMLIST, with the command byte
/// the macros are sent before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    Eom = 5,
    Eoh = 6,
}

impl Stage {
    fn command_byte(self) -> u8 {
        match self {
            Stage::Connect => b'C',
            Stage::Helo => b'H',
            Stage::Mail => b'M',
            Stage::Rcpt => b'R',
            Stage::Data => b'T',
            Stage::Eom => b'E',
            Stage::Eoh => b'N',
        }
    }
}

/// The client's address as SMFIC_CONNECT carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Inet(std::net::SocketAddr),
    /// A local submission: no address (`SMFIA_UNKNOWN`).
    Unknown,
}

/// One command to a milter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    OptNeg {
        actions: u32,
        protocol: u32,
    },
    Macros {
        stage: Stage,
        macros: &'a [(String, String)],
    },
    Connect {
        host: &'a str,
        family: Family,
    },
    Helo(&'a str),
    /// The reverse path in angle brackets, then the ESMTP parameters.
    Mail(&'a [String]),
    Rcpt(&'a [String]),
    Data,
    Header {
        name: &'a str,
        value: &'a str,
    },
    Eoh,
    Body(&'a [u8]),
    Eom,
    Abort,
    Quit,
}

impl Command<'_> {
    /// The packet, length prefix included, appended to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Command::OptNeg { actions, protocol } => {
                out.push(b'O');
                for n in [VERSION, *actions, *protocol] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
            Command::Macros { stage, macros } => {
                out.push(b'D');
                out.push(stage.command_byte());
                for (name, value) in macros.iter() {
                    cstr(out, name.as_bytes());
                    cstr(out, value.as_bytes());
                }
            }
            Command::Connect { host, family } => {
                out.push(b'C');
                cstr(out, host.as_bytes());
                match family {
                    Family::Inet(addr) => {
                        out.push(if addr.is_ipv4() { b'4' } else { b'6' });
                        out.extend_from_slice(&addr.port().to_be_bytes());
                        cstr(out, addr.ip().to_canonical().to_string().as_bytes());
                    }
                    Family::Unknown => out.push(b'U'),
                }
            }
            Command::Helo(name) => {
                out.push(b'H');
                cstr(out, name.as_bytes());
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                out.push(if matches!(self, Command::Mail(_)) { b'M' } else { b'R' });
                for arg in args.iter() {
                    cstr(out, arg.as_bytes());
                }
            }
            Command::Data => out.push(b'T'),
            Command::Header { name, value } => {
                out.push(b'L');
                cstr(out, name.as_bytes());
                cstr(out, value.as_bytes());
            }
            Command::Eoh => out.push(b'N'),
            Command::Body(chunk) => {
                out.push(b'B');
                out.extend_from_slice(chunk);
            }
            Command::Eom => out.push(b'E'),
            Command::Abort => out.push(b'A'),
            Command::Quit => out.push(b'Q'),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// A NUL-terminated string; a NUL inside (which SMTP never lets through)
/// would end it early, so it is dropped.
fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.push(0);
}

/// One response from a milter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        macros: Vec<(u32, String)>,
    },
    Accept,
    Continue,
    Discard,
    Reject,
    Tempfail,
    /// SMFIR_REPLYCODE: `550 5.7.1 text`, the milter's own reply.
    ReplyCode(String),
    /// SMFIR_SKIP: no more body chunks wanted.
    Skip,
    /// SMFIR_PROGRESS: still working, the timeout starts again.
    Progress,
    Quarantine(String),
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// An empty value deletes the `index`th field named `name` (1-based).
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    ReplaceBody(Vec<u8>),
    AddRcpt {
        address: String,
        args: Option<String>,
    },
    DeleteRcpt(String),
    ChangeFrom {
        address: String,
        args: Option<String>,
    },
    /// SMFIR_SHUTDOWN, SMFIR_CONN_FAIL: the milter gives up the session.
    Shutdown,
}

/// A packet that is not the milter protocol.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtoError {
    #[error("packet of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("empty packet")]
    Empty,
    #[error("unknown response code {0:?}")]
    Unknown(char),
    #[error("malformed {0:?} response")]
    Malformed(char),
}

/// Collects bytes from a milter and cuts them into responses.
#[derive(Default)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete response, `None` until one is.
    pub(crate) fn next(&mut self) -> Result<Option<Response>, ProtoError> {
        let Some(head) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes(head.try_into().expect("four bytes")) as usize;
        if len > MAX_PACKET {
            return Err(ProtoError::TooLong(len));
        }
        if len == 0 {
            return Err(ProtoError::Empty);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let packet: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        decode(packet[0], &packet[1..]).map(Some)
    }
}

/// Decodes the data of one response with code `code`.
fn decode(code: u8, data: &[u8]) -> Result<Response, ProtoError> {
    let bad = || ProtoError::Malformed(code as char);
    let strings = || -> Result<Vec<String>, ProtoError> {
        let Some(body) = data.strip_suffix(&[0]) else { return Err(bad()) };
        Ok(body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
    };
    let indexed = || -> Result<(u32, Vec<String>), ProtoError> {
        let index = u32::from_be_bytes(data.get(..4).ok_or_else(bad)?.try_into().expect("four bytes"));
        let Some(body) = data[4..].strip_suffix(&[0]) else { return Err(bad()) };
        Ok((index, body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()))
    };
    Ok(match code {
        b'O' => optneg(data).ok_or_else(bad)?,
        b'a' => Response::Accept,
        b'c' => Response::Continue,
        b'd' => Response::Discard,
        b'r' => Response::Reject,
        b't' => Response::Tempfail,
        b's' => Response::Skip,
        b'p' => Response::Progress,
        b'4' | b'f' => Response::Shutdown,
        b'y' => Response::ReplyCode(strings()?.concat()),
        // Sendmail sends the reason NUL-terminated; some milters do not.
        b'q' => Response::Quarantine(String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(data)).into_owned()),
        b'b' => Response::ReplaceBody(data.to_vec()),
        b'h' => match strings()?.as_slice() {
            [name, value] => Response::AddHeader { name: name.clone(), value: value.clone() },
            _ => return Err(bad()),
        },
        b'i' | b'm' => match indexed()? {
            (index, fields) if fields.len() == 2 => {
                let (name, value) = (fields[0].clone(), fields[1].clone());
                if code == b'i' {
                    Response::InsertHeader { index, name, value }
                } else {
                    Response::ChangeHeader { index, name, value }
                }
            }
            _ => return Err(bad()),
        },
        b'+' => Response::AddRcpt { address: strings()?.concat(), args: None },
        b'2' | b'e' => {
            let mut fields = strings()?.into_iter();
            let address = fields.next().ok_or_else(bad)?;
            let args = fields.next().filter(|a| !a.is_empty());
            if code == b'2' { Response::AddRcpt { address, args } } else { Response::ChangeFrom { address, args } }
        }
        b'-' => Response::DeleteRcpt(strings()?.concat()),
        other => return Err(ProtoError::Unknown(other as char)),
    })
}

/// SMFIC_OPTNEG's answer: version, actions, flags, then optionally the
/// macro lists per stage (SMFIR_SETSYMLIST folded into the negotiation).
fn optneg(data: &[u8]) -> Option<Response> {
    let word = |at: usize| data.get(at..at + 4).map(|w| u32::from_be_bytes(w.try_into().expect("four bytes")));
    let (version, actions, protocol) = (word(0)?, word(4)?, word(8)?);
    let mut macros = Vec::new();
    let mut at = 12;
    while at < data.len() {
        let stage = word(at)?;
        let rest = &data[at + 4..];
        let end = rest.iter().position(|&b| b == 0)?;
        macros.push((stage, String::from_utf8_lossy(&rest[..end]).into_owned()));
        at += 4 + end + 1;
    }
    Some(Response::OptNeg { version, actions, protocol, macros })
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Eom => "end-of-message",
            Stage::Eoh => "end-of-header",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(cmd: Command<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        cmd.encode(&mut out);
        out
    }

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(code);
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn commands_on_the_wire() {
        let macros = [("j".to_string(), "mx.test".to_string()), ("{daemon_name}".into(), "posthorn".into())];
        let args = ["<a@example.net>".to_string(), "SIZE=10".to_string()];
        let cases: Vec<(Command<'_>, Vec<u8>)> = vec![
            (
                Command::OptNeg { actions: action::ALL, protocol: flag::ALL },
                packet(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]),
            ),
            (
                Command::Macros { stage: Stage::Connect, macros: &macros },
                packet(b'D', b"Cj\0mx.test\0{daemon_name}\0posthorn\0"),
            ),
            (
                Command::Connect { host: "unknown", family: Family::Inet("192.0.2.1:2525".parse().unwrap()) },
                packet(b'C', b"unknown\x004\x09\xdd192.0.2.1\0"),
            ),
            (
                Command::Connect { host: "h", family: Family::Inet("[2001:db8::1]:25".parse().unwrap()) },
                packet(b'C', b"h\x006\x00\x192001:db8::1\0"),
            ),
            (Command::Connect { host: "localhost", family: Family::Unknown }, packet(b'C', b"localhost\0U")),
            (Command::Helo("client.example"), packet(b'H', b"client.example\0")),
            (Command::Mail(&args), packet(b'M', b"<a@example.net>\0SIZE=10\0")),
            (Command::Rcpt(&args[..1]), packet(b'R', b"<a@example.net>\0")),
            (Command::Header { name: "Subject", value: "hi\0there" }, packet(b'L', b"Subject\0hithere\0")),
            (Command::Body(b"x\r\n"), packet(b'B', b"x\r\n")),
            (Command::Data, packet(b'T', b"")),
            (Command::Eoh, packet(b'N', b"")),
            (Command::Eom, packet(b'E', b"")),
            (Command::Abort, packet(b'A', b"")),
            (Command::Quit, packet(b'Q', b"")),
        ];
        for (cmd, wire) in cases {
            assert_eq!(encoded(cmd.clone()), wire, "{cmd:?}");
        }
    }

    #[test]
    fn responses_from_the_wire() {
        let mut neg = vec![0, 0, 0, 6, 0, 0, 0, 0x21, 0, 0, 0x10, 0x10];
        neg.extend_from_slice(&[0, 0, 0, 5, b'i', b' ', b'j', 0]);
        let cases: Vec<(Vec<u8>, Response)> = vec![
            (
                packet(b'O', &neg),
                Response::OptNeg { version: 6, actions: 0x21, protocol: 0x1010, macros: vec![(5, "i j".into())] },
            ),
            (packet(b'a', b""), Response::Accept),
            (packet(b'c', b""), Response::Continue),
            (packet(b'd', b""), Response::Discard),
            (packet(b'r', b""), Response::Reject),
            (packet(b't', b""), Response::Tempfail),
            (packet(b's', b""), Response::Skip),
            (packet(b'p', b""), Response::Progress),
            (packet(b'4', b""), Response::Shutdown),
            (packet(b'y', b"554 5.7.1 Gtube pattern\0"), Response::ReplyCode("554 5.7.1 Gtube pattern".into())),
            (packet(b'q', b"spam\0"), Response::Quarantine("spam".into())),
            (packet(b'q', b"spam"), Response::Quarantine("spam".into())),
            (packet(b'b', b"new\r\n"), Response::ReplaceBody(b"new\r\n".to_vec())),
            (packet(b'h', b"X-Spam\0Yes\0"), Response::AddHeader { name: "X-Spam".into(), value: "Yes".into() }),
            (
                packet(b'i', b"\0\0\0\x01X-A\0b\0"),
                Response::InsertHeader { index: 1, name: "X-A".into(), value: "b".into() },
            ),
            (
                packet(b'm', b"\0\0\0\x02Subject\0\0"),
                Response::ChangeHeader { index: 2, name: "Subject".into(), value: String::new() },
            ),
            (packet(b'+', b"<x@example.org>\0"), Response::AddRcpt { address: "<x@example.org>".into(), args: None }),
            (
                packet(b'2', b"<x@example.org>\0NOTIFY=NEVER\0"),
                Response::AddRcpt { address: "<x@example.org>".into(), args: Some("NOTIFY=NEVER".into()) },
            ),
            (packet(b'-', b"<y@example.org>\0"), Response::DeleteRcpt("<y@example.org>".into())),
            (
                packet(b'e', b"<s@example.net>\0\0"),
                Response::ChangeFrom { address: "<s@example.net>".into(), args: None },
            ),
        ];
        for (wire, expected) in cases {
            let mut d = Decoder::default();
            d.push(&wire);
            assert_eq!(d.next(), Ok(Some(expected.clone())), "{wire:?}");
            assert_eq!(d.next(), Ok(None));
        }
    }

    #[test]
    fn responses_split_and_joined() {
        let wire = [packet(b'c', b""), packet(b'h', b"X-A\0b\0"), packet(b'a', b"")].concat();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for byte in wire {
            d.push(&[byte]);
            while let Some(r) = d.next().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(
            got,
            [Response::Continue, Response::AddHeader { name: "X-A".into(), value: "b".into() }, Response::Accept]
        );
    }

    #[test]
    fn broken_packets() {
        let cases: Vec<(Vec<u8>, ProtoError)> = vec![
            (vec![0, 0, 0, 0], ProtoError::Empty),
            (vec![0x7f, 0, 0, 0, b'c'], ProtoError::TooLong(0x7f00_0000)),
            (packet(b'Z', b""), ProtoError::Unknown('Z')),
            (packet(b'h', b"X-A\0"), ProtoError::Malformed('h')),
            (packet(b'h', b"no nul"), ProtoError::Malformed('h')),
            (packet(b'm', b"\0\0"), ProtoError::Malformed('m')),
            (packet(b'O', b"\0\0\0\x06"), ProtoError::Malformed('O')),
        ];
        for (wire, expected) in cases {
            let mut d = Decoder::default();
            d.push(&wire);
            assert_eq!(d.next(), Err(expected), "{wire:?}");
        }
    }
}
