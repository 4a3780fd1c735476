//! DATA and BDAT: the checks before a message, and its octets streamed
//! through the decoder into the ingress `MessageWriter`.
//!
//! The verbs' `Session` functions decide, without I/O; `receive_data` and
//! `receive_bdat`, called by the loop, read the octets through its `Conn`
//! and return the final reply. `ReceivingMessage` is one message on its way
//! in: the decoder's findings (size, line length, bare CR or LF) decide
//! whether it is kept, the writer stores it.
//!
//! Inside DATA each read waits at most `smtp.data_timeout`, and never past
//! the message's deadline, which the session loop (`conn`) sets. On shutdown a
//! session inside DATA is left to finish its message, because cutting it
//! off would throw away work the client has already done.
//!
//! CHUNKING (RFC 3030, offered after EHLO, without BINARYMIME): `BDAT size
//! [LAST]` is followed by exactly `size` octets, which the loop always
//! reads, also when it refuses the command (no MAIL, over the size limit,
//! a failed transaction), so the next command is found where the client
//! put it, pipelined or not. The octets are streamed into the same ingress
//! writer and checked by the same decoder as DATA (size, line length, bare
//! CR/LF; no dot-stuffing), so both commands queue the same message the
//! same way. A refused chunk fails the transaction; the chunks the client
//! pipelined behind it are read and refused as BDAT without MAIL. Each
//! read inside a chunk waits at most `smtp.data_timeout`, and a message
//! arriving in chunks is left to finish on shutdown, like DATA.

use super::conn::{Conn, End, READ_SIZE};
use super::session::{Session, Step};
use crate::config::BareNewline;
use crate::ingress::{Ingress, MessageWriter, Transaction};
use crate::smtp::proto::command::Verb;
use crate::smtp::proto::data::DataDecoder;
use crate::smtp::proto::reply::{Enhanced, Reply};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A message arriving in BDAT chunks: what the chunks so far made of it.
pub(super) struct Chunks {
    id: String,
    message: ReceivingMessage,
}

/// Where the octets of the next BDAT chunk go.
enum NextChunk {
    /// The first chunk: the message is still to be opened.
    First(Box<Transaction>),
    /// A later chunk of the message already open.
    More(Box<Chunks>),
}

impl Session<'_> {
    /// DATA, before any message byte: the transaction to open, or why not.
    pub(super) fn data(&mut self) -> Result<Transaction, Reply> {
        if self.chunks.is_some() {
            // RFC 3030 3: one transaction, one way of sending the message.
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: DATA after BDAT"));
        }
        self.transaction()
    }

    /// The reply at the end of the message (DATA's final dot, BDAT LAST);
    /// the transaction is over either way.
    fn message_end(&mut self, verb: Verb, id: &str, result: Result<String, Reply>) -> Reply {
        let reply = match result {
            Ok(id) => Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {id}")),
            Err(reply) => {
                let from = self.mail.as_ref().map(|m| m.sender.clone()).unwrap_or_default();
                tracing::info!(
                    "{id}: reject: END-OF-MESSAGE from {}: {reply}; from=<{from}> proto={} helo=<{}>",
                    self.peer,
                    self.proto(),
                    self.helo.as_deref().unwrap_or("")
                );
                reply
            }
        };
        self.stats.record(Some(verb), reply.is_positive());
        self.reset();
        reply
    }

    /// BDAT, before its octets are read: where they go, or the refusal.
    /// The size is checked against the limit before any octet is stored,
    /// so an absurd size is refused without being buffered.
    fn bdat(&mut self, size: u64) -> Result<NextChunk, Reply> {
        if !self.esmtp {
            // CHUNKING is an extension: offered after EHLO only.
            return Err(Reply::new(503, Enhanced(5, 5, 1), "Error: send EHLO first"));
        }
        let so_far = self.chunks.as_ref().map_or(0, |c| c.message.decoder.size());
        let next = match self.chunks.take() {
            Some(chunks) => NextChunk::More(chunks),
            None => NextChunk::First(Box::new(self.transaction()?)),
        };
        if so_far.saturating_add(size) > self.config.smtp.max_message_size {
            return Err(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"));
        }
        Ok(next)
    }

    /// A refused BDAT (its chunk read and dropped): the transaction has
    /// failed (RFC 3030 3), so later chunks of it are refused too, as
    /// BDAT without MAIL, until the client starts again.
    fn bdat_refused(&mut self, reply: Reply) -> Reply {
        let from = self.mail.as_ref().map(|m| m.sender.clone());
        self.log_reject(Verb::Bdat, &reply, from.as_deref().map(|f| (f, None)));
        self.stats.record(Some(Verb::Bdat), false);
        self.reset();
        reply
    }

    /// A chunk other than the last was stored.
    fn chunk_received(&mut self, chunks: Box<Chunks>, size: u64) -> Reply {
        self.chunks = Some(chunks);
        self.stats.record(Some(Verb::Bdat), true);
        Reply::new(250, Enhanced(2, 0, 0), format!("{size} octets received"))
    }

    /// A BDAT whose size cannot be read: the chunk's octets follow, but
    /// how many is unknown, so nothing after this line can be told apart
    /// from message content. Reading on would run message text as
    /// commands, the injection the smuggling and STARTTLS defences are
    /// there to stop, so the session ends after the 501. (Postfix answers
    /// 501 and reads on.) No working client sends such a size, and a 5xx,
    /// unlike a 421, tells a broken one to give the message up rather than
    /// retry it forever.
    pub(super) fn bdat_unknown_size(&mut self, reply: Reply) -> Step {
        tracing::warn!("{}: malformed BDAT command, chunk size unknown; closing", self.peer);
        self.reset();
        Step::Close(reply)
    }
}

/// DATA after the checks passed: opens the message, sends 354, receives the
/// text, and returns the final reply. Fails only when the session must end.
pub(super) async fn receive_data<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    tx: Transaction,
) -> Result<Reply, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(reply) = session.screen_data().await {
        session.stats.record(Some(Verb::Data), false);
        return Ok(reply);
    }
    let mut writer = match ingress.open(tx).await {
        Ok(w) => w,
        Err(e) => {
            // The transaction stays: the client may retry DATA or RSET.
            session.stats.record(Some(Verb::Data), false);
            return Ok(e.reply());
        }
    };
    if let Err(reply) = session.write_prepended(&mut writer).await {
        session.stats.record(Some(Verb::Data), false);
        return Ok(reply);
    }
    let id = writer.id().to_string();
    conn.queue(&Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
    conn.flush().await?;
    let config = session.config;
    let limits = &config.smtp;
    let decoder = session.decoder(DataDecoder::new(limits.max_data_line_length));
    let mut message = ReceivingMessage::with(decoder, writer, limits.max_message_size);
    message.held = session.holds_message().then(Vec::new);
    // What the client sent after DATA in the same packet is message text.
    let early = conn.reader.take_buffered();
    let used = message.take(&early).await;
    if message.decoder.is_done() {
        conn.reader.push(&early[used..]);
    } else {
        loop {
            let n = conn.read(limits.data_timeout).await?;
            let used = message.take(&conn.buf[..n]).await;
            if message.decoder.is_done() {
                conn.reader.push(&conn.buf[used..n]);
                break;
            }
        }
    }
    let result = message.finish(session).await;
    Ok(session.message_end(Verb::Data, &id, result))
}

impl Session<'_> {
    /// `decoder` as this client gets it: with bare LF normalized when
    /// `smtp.bare_newline = "normalize"` and the client is trusted (a
    /// trusted network, a local submission, the filter reinjecting), as
    /// Postfix 3.9 does with `$mynetworks` excluded from its ban.
    fn decoder(&self, decoder: DataDecoder) -> DataDecoder {
        let trusted = super::access::is_trusted(&self.config.access, &self.peer) || self.ingress.is_reinjection();
        match self.config.smtp.bare_newline {
            BareNewline::Normalize if trusted => decoder.normalizing(),
            _ => decoder,
        }
    }
}

/// BDAT after its command line: reads the chunk into the message, or drops
/// it when the command is refused (RFC 3030 3: the octets follow the
/// command whatever the server thinks of it), and returns the reply. Fails
/// only when the session must end.
///
/// Bare CR and bare LF: BDAT has no end-of-data sequence, so they cannot
/// smuggle a command here, and Postfix accepts them and normalises the
/// line ends. posthorn refuses the message (550 5.5.2) all the same, as
/// DATA does: one content policy whichever command carries the message,
/// no way around the DATA check by switching to BDAT, and the spool holds
/// exactly what was sent, never a rewritten copy nor a bare LF that the
/// next hop, reached with DATA, might take as the end of the data.
pub(super) async fn receive_bdat<S>(
    session: &mut Session<'_>,
    conn: &mut Conn<S>,
    ingress: &Ingress,
    size: u64,
    last: bool,
) -> Result<Reply, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &session.config.smtp;
    let opened = match session.bdat(size) {
        Ok(NextChunk::More(chunks)) => Ok(chunks),
        Ok(NextChunk::First(tx)) => match session.screen_data().await {
            Err(reply) => Err(reply),
            Ok(()) => match ingress.open(*tx).await {
                Ok(mut writer) => match session.write_prepended(&mut writer).await {
                    Err(reply) => Err(reply),
                    Ok(()) => {
                        let id = writer.id().to_string();
                        let decoder = session.decoder(DataDecoder::chunks(limits.max_data_line_length));
                        let mut message = ReceivingMessage::with(decoder, writer, limits.max_message_size);
                        message.held = session.holds_message().then(Vec::new);
                        Ok(Box::new(Chunks { id, message }))
                    }
                },
                Err(e) => Err(e.reply()),
            },
        },
        Err(reply) => Err(reply),
    };
    let mut chunks = match opened {
        Ok(chunks) => chunks,
        Err(reply) => {
            read_chunk(conn, size, limits.data_timeout, None).await?;
            return Ok(session.bdat_refused(reply));
        }
    };
    read_chunk(conn, size, limits.data_timeout, Some(&mut chunks.message)).await?;
    if last {
        chunks.message.end_of_data();
        let result = chunks.message.finish(session).await;
        return Ok(session.message_end(Verb::Bdat, &chunks.id, result));
    }
    match chunks.message.failure() {
        Some(reply) => Ok(session.message_end(Verb::Bdat, &chunks.id, Err(reply))),
        None => Ok(session.chunk_received(chunks, size)),
    }
}

/// Reads exactly `size` octets, the ones already buffered behind the
/// command line first, into `message` (or nowhere), a read at a time:
/// a chunk is never held whole in memory. Each read waits at most
/// `timeout`, as in DATA. What a read brings beyond the chunk goes back
/// to the line reader: pipelined commands after it.
pub(super) async fn read_chunk<S>(
    conn: &mut Conn<S>,
    size: u64,
    timeout: Duration,
    mut message: Option<&mut ReceivingMessage>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let early = conn.reader.take_up_to(size);
    let mut left = size - early.len() as u64;
    if let Some(message) = message.as_deref_mut() {
        message.take(early).await;
    }
    while left > 0 {
        // RFC 2920: replies to earlier commands go out before waiting.
        conn.flush().await?;
        let n = conn.read(timeout).await?;
        let used = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Some(message) = message.as_deref_mut() {
            message.take(&conn.buf[..used]).await;
        }
        conn.reader.push(&conn.buf[used..n]);
        left -= used as u64;
    }
    Ok(())
}

/// One message being received: the decoder, and the writer until the
/// message is known to be refused (dropping the writer discards it).
pub(super) struct ReceivingMessage {
    decoder: DataDecoder,
    writer: Option<MessageWriter>,
    decoded: Vec<u8>,
    max_size: u64,
    /// The ingress refused a write (disk trouble); the message is lost.
    write_failure: Option<Reply>,
    /// The message kept in memory for the milters, which may change it
    /// before it is written (`milters`); `None`: written as it comes.
    held: Option<Vec<u8>>,
}

impl ReceivingMessage {
    fn with(decoder: DataDecoder, writer: MessageWriter, max_size: u64) -> ReceivingMessage {
        ReceivingMessage {
            decoder,
            writer: Some(writer),
            decoded: Vec::with_capacity(READ_SIZE + 64),
            max_size,
            write_failure: None,
            held: None,
        }
    }

    /// Decodes a chunk and stores what belongs to the message; returns the
    /// bytes of `chunk` used. Once the message is known to be refused, the
    /// rest is still read (the client only listens again after the final
    /// dot) but no longer stored.
    async fn take(&mut self, chunk: &[u8]) -> usize {
        self.decoded.clear();
        let used = self.decoder.feed(chunk, &mut self.decoded);
        if self.refusal().is_some() {
            self.writer = None;
            self.held = None;
        }
        if let Some(held) = self.held.as_mut() {
            held.extend_from_slice(&self.decoded);
        } else if let Some(writer) = self.writer.as_mut()
            && !self.decoded.is_empty()
            && let Err(e) = writer.write(&self.decoded).await
        {
            self.write_failure = Some(e.reply());
            self.writer = None;
        }
        used
    }

    /// The refusal the decoder's findings call for, most serious first:
    /// smuggling before size, so a message both too big and carrying a bare
    /// LF is reported as what it is most likely to be.
    fn refusal(&self) -> Option<Reply> {
        let d = &self.decoder;
        if d.saw_bare_line_ending() {
            Some(Reply::new(550, Enhanced(5, 5, 2), "Message contains bare CR or LF"))
        } else if d.size() > self.max_size {
            Some(Reply::new(552, Enhanced(5, 3, 4), "Message size exceeds fixed limit"))
        } else if d.saw_long_line() {
            Some(Reply::new(550, Enhanced(5, 6, 0), "Message contains a line that is too long"))
        } else {
            None
        }
    }

    /// Why the message can no longer be accepted, if it cannot: checked
    /// after each BDAT chunk, so a doomed message fails at once.
    fn failure(&self) -> Option<Reply> {
        self.refusal().or_else(|| self.write_failure.clone())
    }

    /// After the LAST chunk: a CR at the very end is a bare CR. Nothing is
    /// written: such a message is refused.
    fn end_of_data(&mut self) {
        self.decoded.clear();
        self.decoder.end(&mut self.decoded);
        if self.refusal().is_some() {
            self.writer = None;
        }
    }

    /// After the final dot or the LAST chunk: commits the message (after
    /// the milters, when it was held for them), or says why not.
    async fn finish(self, session: &mut Session<'_>) -> Result<String, Reply> {
        if let Some(reply) = self.failure() {
            return Err(reply);
        }
        match (self.writer, self.held) {
            (Some(mut writer), Some(mut text)) => {
                session.verify_message(&mut writer, &mut text).await?;
                if session.milters_want_message() {
                    session.milters_end_of_message(writer, text).await
                } else {
                    writer.write(&text).await.map_err(|e| e.reply())?;
                    writer.commit().await.map_err(|e| e.reply())
                }
            }
            (Some(writer), None) => writer.commit().await.map_err(|e| e.reply()),
            (None, _) => Err(Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::test_support::queue_ingress;
    use crate::smtp::server::conn::serve;
    use crate::smtp::server::session::{Listener, Security, run_session};
    use crate::smtp::server::test_support::{
        Client, STRANGER, TRUSTED, check_dialogs, config, converse, lines, short, tcp,
    };
    use tokio::sync::watch;

    fn message(size: usize, line: usize) -> String {
        let mut m = String::from("Subject: test\r\n\r\n");
        while m.len() < size {
            m.push_str(&"x".repeat(line.min(size - m.len()).max(1)));
            m.push_str("\r\n");
        }
        m
    }

    /// DATA: messages kept, messages refused, the session going on after them.
    #[tokio::test]
    async fn data_dialogs() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        let big = message(6000, 100);
        let long_line = format!("Subject: x\r\n\r\n{}\r\n", "x".repeat(1100));
        check_dialogs(vec![
            (
                "good transaction",
                TRUSTED,
                lines(&[ehlo, mail, rcpt, "DATA", "Subject: hi", "", "body", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "message too big, session goes on",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), big.clone().into_bytes(), lines(&[".", "NOOP", "QUIT"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "data line too long",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), long_line.into_bytes(), lines(&[".", "QUIT"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.6.0", "221 2.0.0"],
            ),
            (
                "bare LF in DATA from a stranger",
                STRANGER,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"Subject: x\n\nbody\r\n".to_vec(), lines(&[".", "NOOP"])]
                    .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "250 2.0.0"],
            ),
            (
                "bare LF in DATA from a trusted network: normalized",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"Subject: x\n\nbody\r\n".to_vec(), lines(&[".", "NOOP"])]
                    .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0"],
            ),
            (
                "bare CR in DATA",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"a\rb\r\n".to_vec(), lines(&[".", "NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "250 2.0.0"],
            ),
            (
                // The smuggled transaction must be message text, not commands.
                "smuggling attempt",
                STRANGER,
                [
                    lines(&[ehlo, mail, rcpt, "DATA"]),
                    b"one\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
                        .to_vec(),
                    lines(&[".", "QUIT"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "550 5.5.2", "221 2.0.0"],
            ),
            (
                // The smuggled transaction must be message text, not commands.
                "smuggling attempt from a trusted network: one message",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt, "DATA"]),
                    b"one\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
                        .to_vec(),
                    lines(&[".", "QUIT"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "empty message",
                TRUSTED,
                lines(&[ehlo, mail, rcpt, "DATA", "."]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"],
            ),
            (
                "client leaves in the middle of DATA",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt, "DATA"]), b"partial".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "354"],
            ),
        ])
        .await;
    }

    /// BDAT: chunks read whether refused or not, and the transaction they belong to.
    #[tokio::test]
    async fn bdat_dialogs() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        // `n` octets of 100-octet lines, for BDAT chunks.
        let text = |n: usize| format!("{}\r\n", "x".repeat(98)).repeat(n / 100);
        check_dialogs(vec![
            (
                "BDAT in three chunks, pipelined",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    b"BDAT 5\r\nab\r\ncBDAT 3\r\nd\r\nBDAT 0 LAST\r\n".to_vec(),
                    lines(&["QUIT"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"],
            ),
            (
                // The octets of a refused chunk are read, not taken as commands.
                "BDAT before MAIL",
                TRUSTED,
                [lines(&[ehlo]), b"BDAT 6\r\nQUIT\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "BDAT after HELO",
                TRUSTED,
                [lines(&["HELO c", mail, rcpt]), b"BDAT 6 LAST\r\nQUIT\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "503 5.5.1", "250 2.0.0"],
            ),
            (
                // 5000 is the limit: the second chunk goes over, the third
                // belongs to a failed transaction.
                "BDAT over the size limit",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    format!("BDAT 3000\r\n{}", text(3000)).into_bytes(),
                    format!("BDAT 3000\r\n{}", text(3000)).into_bytes(),
                    b"BDAT 4 LAST\r\nNOOP".to_vec(),
                    lines(&["RSET", mail, rcpt]),
                    b"BDAT 5000 LAST\r\n".to_vec(),
                    text(5000).into_bytes(),
                ]
                .concat(),
                vec![
                    "250",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.0.0",
                    "552 5.3.4",
                    "503 5.5.1",
                    "250 2.0.0",
                    "250 2.1.0",
                    "250 2.1.5",
                    "250 2.0.0",
                ],
            ),
            (
                // Refused before a byte is stored, but read all the same.
                "one BDAT chunk over the size limit",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    format!("BDAT 6000 LAST\r\n{}", text(6000)).into_bytes(),
                    lines(&["NOOP"]),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "552 5.3.4", "250 2.0.0"],
            ),
            (
                "DATA, RCPT and MAIL after BDAT",
                TRUSTED,
                [
                    lines(&[ehlo, mail, rcpt]),
                    b"BDAT 3\r\nabc".to_vec(),
                    lines(&["DATA", rcpt, mail]),
                    b"BDAT 2 LAST\r\n\r\n".to_vec(),
                ]
                .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "RSET between chunks drops the message",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 3\r\nabc".to_vec(), lines(&["RSET"]), b"BDAT 0 LAST\r\n".to_vec()]
                    .concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "503 5.5.1"],
            ),
            (
                "BDAT size unreadable: 501, then the session ends",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 12x\r\nNOOP\r\n".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "501 5.5.4"],
            ),
            (
                "BDAT with a bad end marker: its chunk is read",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 6 MORE\r\nQUIT\r\n".to_vec(), lines(&["MAIL FROM:<>"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "501 5.5.4", "250 2.1.0"],
            ),
            (
                "bare LF in BDAT from a stranger",
                STRANGER,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 3\r\na\nbBDAT 0 LAST\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "550 5.5.2", "503 5.5.1", "250 2.0.0"],
            ),
            (
                "bare LF in BDAT from a trusted network: normalized",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 3\r\na\nbBDAT 0 LAST\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0"],
            ),
            (
                "bare CR at the end of the last chunk",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 2\r\na\rBDAT 0 LAST\r\n".to_vec(), lines(&["NOOP"])].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "550 5.5.2", "250 2.0.0"],
            ),
            (
                "BDAT data line too long",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), format!("BDAT 1200 LAST\r\n{}", "z".repeat(1200)).into_bytes()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5", "550 5.6.0"],
            ),
            (
                "client leaves in the middle of a chunk",
                TRUSTED,
                [lines(&[ehlo, mail, rcpt]), b"BDAT 100\r\npartial".to_vec()].concat(),
                vec!["250", "250 2.1.0", "250 2.1.5"],
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn pipelined_transactions_in_one_write() {
        let config = config("");
        let mut input = Vec::new();
        for i in 0..3 {
            input.extend(lines(&[
                "MAIL FROM:<s@example.net>",
                &format!("RCPT TO:<r{i}@example.org>"),
                "DATA",
                &format!("Subject: {i}"),
                "",
                "..dot",
                ".",
            ]));
        }
        let input = [lines(&["EHLO c"]), input, lines(&["QUIT"])].concat();
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let codes: Vec<u16> = got.iter().map(|r| r.code).collect();
        assert_eq!(codes, [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
        for (i, reply) in got.iter().filter(|r| r.lines[0].starts_with("Ok: queued as ")).enumerate() {
            let id = reply.lines[0].trim_start_matches("Ok: queued as ");
            let (_, env) = spool.find(id).expect("queued");
            assert_eq!(env.recipients[0].address, format!("r{i}@example.org"));
            let body = spool.read_body(id).unwrap();
            assert!(body.starts_with(b"Received: "), "{}", String::from_utf8_lossy(&body));
            let text = format!("Subject: {i}\r\n\r\n.dot\r\n");
            assert!(body.ends_with(text.as_bytes()), "{}", String::from_utf8_lossy(&body));
        }
    }

    #[tokio::test]
    async fn refused_messages_leave_nothing_queued() {
        let config = config("");
        let input = [
            lines(&["EHLO c", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "DATA"]),
            message(6000, 100).into_bytes(),
            lines(&[".", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "DATA", "bare\nLF", "."]),
        ]
        .concat();
        let (got, spool, _dir) = converse(&config, tcp(STRANGER), &input).await;
        assert_eq!(got.iter().filter(|r| r.code == 354).count(), 2);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
        assert_eq!(std::fs::read_dir(spool.root().join("data")).unwrap().count(), 0);
    }

    /// A message in BDAT chunks lands exactly as sent, behind the same
    /// Received header and with the same envelope flags as DATA gives it:
    /// dots are text, a CRLF may be split between chunks, 8-bit octets and
    /// a last line without CRLF pass through.
    #[tokio::test]
    async fn bdat_message_lands_as_sent() {
        let config = config("");
        let message: &[u8] = b"Subject: chunks\r\n\r\n.\r\n..two dots\r\nb\xc3\xb8dy\r\nno line end";
        let (one, rest) = message.split_at(21);
        let (two, three) = rest.split_at(13);
        assert!(one.ends_with(b"\r") && two.starts_with(b"\n"), "a CRLF split between chunks");
        let input = [
            lines(&[
                "EHLO client.example",
                "MAIL FROM:<s@example.net> BODY=8BITMIME SMTPUTF8",
                "RCPT TO:<a@example.org>",
            ]),
            format!("BDAT {}\r\n", one.len()).into_bytes(),
            one.to_vec(),
            format!("BDAT {}\r\n", two.len()).into_bytes(),
            two.to_vec(),
            format!("bdat {} last\r\n", three.len()).into_bytes(),
            three.to_vec(),
            lines(&["QUIT"]),
        ]
        .concat();
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let texts: Vec<String> = got.iter().map(|r| format!("{} {}", short(r), r.lines[0])).collect();
        assert_eq!(texts[4], "250 2.0.0 21 octets received", "{texts:?}");
        assert_eq!(texts[5], "250 2.0.0 13 octets received", "{texts:?}");
        let id = got[6].lines[0].strip_prefix("Ok: queued as ").unwrap_or_else(|| panic!("{texts:?}"));
        assert_eq!(short(&got[7]), "221 2.0.0");
        let (_, env) = spool.find(id).unwrap();
        assert!(env.eight_bit && env.smtputf8);
        assert_eq!(env.recipients[0].address, "a@example.org");
        let body = spool.read_body(id).unwrap();
        assert!(body.starts_with(b"Received: from client.example ([10.0.0.5])"), "{}", String::from_utf8_lossy(&body));
        assert!(body.ends_with(message), "{}", String::from_utf8_lossy(&body));
        assert_eq!(body.windows(message.len()).filter(|w| *w == message).count(), 1);
    }

    /// `BDAT 0 LAST` alone is a message: the empty one.
    #[tokio::test]
    async fn bdat_zero_last_is_an_empty_message() {
        let config = config("");
        let input = lines(&["EHLO c", "MAIL FROM:<>", "RCPT TO:<a@example.org>", "BDAT 0 LAST", "NOOP"]);
        let (got, spool, _dir) = converse(&config, tcp(TRUSTED), &input).await;
        let id = got[4].lines[0].strip_prefix("Ok: queued as ").expect("queued");
        assert_eq!(short(&got[5]), "250 2.0.0");
        let body = spool.read_body(id).unwrap();
        assert!(body.starts_with(b"Received: ") && body.ends_with(b"\r\n"), "{}", String::from_utf8_lossy(&body));
    }

    #[tokio::test]
    async fn step_by_step_data_split_across_writes() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(b"EHLO c\r\n").await;
            c.expect("250").await;
            c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n").await;
            c.expect("250 2.1.0").await;
            c.expect("250 2.1.5").await;
            c.expect("354").await;
            // The terminator arrives in pieces, with the next command glued on.
            for piece in [&b"line one\r\n"[..], b"line two\r", b"\n.", b"\r", b"\nNO", b"OP\r\n"] {
                c.send(piece).await;
                tokio::task::yield_now().await;
            }
            let queued = c.expect("250 2.0.0").await;
            c.expect("250 2.0.0").await;
            c.send(b"QUIT\r\n").await;
            c.expect("221 2.0.0").await;
            assert!(c.reply().await.is_none(), "closed after QUIT");
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let ((), id) = tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert!(spool.read_body(&id).unwrap().ends_with(b"\r\nline one\r\nline two\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn data_timeout() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA"])).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "354"] {
                c.expect(expected).await;
            }
            c.send(b"Subject: slow\r\n").await;
            let start = tokio::time::Instant::now();
            c.expect("421 4.4.2").await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(60), "{waited:?}");
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
    }

    /// Inside a chunk the data timeout applies, not the command timeout;
    /// nothing is queued from a chunk cut short.
    #[tokio::test(start_paused = true)]
    async fn bdat_chunk_timeout() {
        let config = config("command_timeout = \"1h\"\ndata_timeout = \"20s\"");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "BDAT 100 LAST"])).await;
            c.send(b"Subject: slow\r\n").await;
            // The replies before the chunk are not held back by it.
            for expected in ["250", "250 2.1.0", "250 2.1.5"] {
                c.expect(expected).await;
            }
            let start = tokio::time::Instant::now();
            c.expect("421 4.4.2").await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(60), "{waited:?}");
            assert!(c.reply().await.is_none());
        };
        tokio::join!(run_session(server, tcp(TRUSTED), &config, &ingress), talk);
        assert_eq!(spool.list(crate::spool::State::Incoming).unwrap(), Vec::<String>::new());
    }

    /// Chunks and commands arriving a byte at a time, or all at once, get
    /// the same replies and queue the same message.
    #[tokio::test]
    async fn bdat_split_across_writes() {
        let config = config("");
        let input = [
            lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>"]),
            b"BDAT 4\r\nSubjBDAT 11\r\nect: x\r\n\r\nbBDAT 4 LAST\r\nody\n".to_vec(),
            lines(&["NOOP", "QUIT"]),
        ]
        .concat();
        let good = String::from_utf8(input.clone()).unwrap().replace("BDAT 4 LAST\r\nody\n", "BDAT 5 LAST\r\nody\r\n");
        let codes = |got: &[Reply]| got.iter().map(short).collect::<Vec<_>>();
        let (whole, _, _dir) = converse(&config, tcp(STRANGER), &input).await;
        assert_eq!(
            codes(&whole),
            ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "550 5.5.2", "250 2.0.0", "221 2.0.0"]
        );
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        // Room for every reply: the client reads only after sending all.
        let (client, server) = tokio::io::duplex(1 << 16);
        let talk = async move {
            let mut c = Client::new(client);
            for byte in good.as_bytes() {
                c.send(std::slice::from_ref(byte)).await;
            }
            let mut got = Vec::new();
            while let Some(reply) = c.reply().await {
                got.push(reply);
            }
            got
        };
        let ((), got) = tokio::join!(run_session(server, tcp(STRANGER), &config, &ingress), talk);
        assert_eq!(
            codes(&got),
            ["220", "250", "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"]
        );
        let id = got[6].lines[0].trim_start_matches("Ok: queued as ");
        assert!(spool.read_body(id).unwrap().ends_with(b"\r\nSubject: x\r\n\r\nbody\r\n"));
    }

    /// Shutdown between two chunks: the message is finished, then 421.
    #[tokio::test]
    async fn shutdown_between_chunks_lets_the_message_finish() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = watch::channel(false);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "BDAT 12"])).await;
            c.send(b"Subject: x\r\n").await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "250 2.0.0"] {
                c.expect(expected).await;
            }
            stop.send(true).unwrap();
            tokio::task::yield_now().await;
            c.send(b"BDAT 6 LAST\r\n\r\nbodyNOOP\r\n").await;
            let queued = c.expect("250 2.0.0").await;
            c.expect("421 4.3.2").await;
            assert!(c.reply().await.is_none());
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let security = Security::none();
        let ((), id) = tokio::join!(
            serve(server, tcp(TRUSTED), Listener::Smtp, &config, &ingress, &security, Some(stopped)),
            talk
        );
        assert!(spool.read_body(&id).unwrap().ends_with(b"Subject: x\r\n\r\nbody"));
    }

    #[tokio::test]
    async fn shutdown_during_data_lets_the_message_finish() {
        let config = config("");
        let dir = tempfile::tempdir().unwrap();
        let (ingress, spool) = queue_ingress(dir.path(), &config);
        let (client, server) = tokio::io::duplex(4096);
        let (stop, stopped) = watch::channel(false);
        let talk = async move {
            let mut c = Client::new(client);
            c.expect("220").await;
            c.send(&lines(&["EHLO c", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA"])).await;
            for expected in ["250", "250 2.1.0", "250 2.1.5", "354"] {
                c.expect(expected).await;
            }
            c.send(b"Subject: x\r\n").await;
            stop.send(true).unwrap();
            tokio::task::yield_now().await;
            c.send(b"\r\nbody\r\n.\r\nNOOP\r\n").await;
            let queued = c.expect("250 2.0.0").await;
            c.expect("421 4.3.2").await;
            assert!(c.reply().await.is_none());
            queued.lines[0].trim_start_matches("Ok: queued as ").to_string()
        };
        let security = Security::none();
        let ((), id) = tokio::join!(
            serve(server, tcp(TRUSTED), Listener::Smtp, &config, &ingress, &security, Some(stopped)),
            talk
        );
        assert!(spool.find(&id).is_some());
    }
}
