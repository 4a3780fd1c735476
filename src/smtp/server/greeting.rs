//! The greeting phase: the 220 banner, EHLO and HELO, and the extensions
//! EHLO announces (STARTTLS and AUTH only when they can be used).

use super::session::Session;
use crate::smtp::proto::reply::Reply;

impl Session<'_> {
    pub(super) fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP posthorn", self.hostname()))
    }

    pub(super) fn ehlo(&mut self, name: String) -> Reply {
        self.reset();
        self.helo = Some(name);
        self.esmtp = true;
        let mut lines = vec![
            self.hostname().to_string(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        if self.vouched_for() {
            // posthorn's own: the previous hop may pass its trace id
            // (TRACE=); offered only to whom MAIL accepts it from.
            lines.push("XPOSTHORN-TRACE".into());
        }
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::multi(250, lines)
    }

    pub(super) fn helo(&mut self, name: String) -> Reply {
        self.reset();
        self.helo = Some(name);
        self.esmtp = false;
        Reply::plain(250, self.hostname())
    }
}

#[cfg(test)]
mod tests {
    use crate::smtp::server::test_support::{TRUSTED, check_dialogs, config, converse, lines, tcp};

    /// HELO instead of EHLO; a new EHLO starts over.
    #[tokio::test]
    async fn greeting_dialogs() {
        let ehlo = "EHLO client.example";
        let mail = "MAIL FROM:<sender@example.net>";
        let rcpt = "RCPT TO:<user@example.org>";
        check_dialogs(vec![
            (
                "plain HELO",
                TRUSTED,
                lines(&["HELO client", mail, rcpt, "DATA", "x", ".", "QUIT"]),
                vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
            ),
            (
                "EHLO resets the transaction",
                TRUSTED,
                lines(&[ehlo, mail, ehlo, rcpt]),
                vec!["250", "250 2.1.0", "250", "503 5.5.1"],
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn greeting_and_ehlo_text() {
        let config = config("");
        let (got, _, _dir) = converse(&config, tcp(TRUSTED), &lines(&["EHLO c", "HELO c"])).await;
        assert_eq!(got[0].to_wire(), b"220 mx.test ESMTP posthorn\r\n");
        assert_eq!(
            String::from_utf8(got[1].to_wire()).unwrap(),
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 5000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-CHUNKING\r\n250 XPOSTHORN-TRACE\r\n"
        );
        assert_eq!(got[2].to_wire(), b"250 mx.test\r\n");
    }
}
