//! The before-queue milter client (Sendmail milter protocol version 6, as
//! Postfix speaks it): rspamd, OpenDKIM, clamav-milter and the like see
//! every SMTP session's phases and the message before the 250, and their
//! verdicts and changes apply to what is queued.
//!
//! - `proto`: the protocol without I/O: commands encoded, responses decoded.
//! - `client`: one session's conversations with its milters, with their
//!   timeouts and `milter.default_action`.
//! - `edit`: the changes asked at the end of the message, applied to it.
//!
//! The SMTP session drives it (`smtp::server::milters`), and so does the
//! maildrop pickup for `milter.non_smtpd_milters`. Uses `config`,
//! `message` and `smtp::proto`'s replies, nothing above them.

pub(crate) mod client;
pub(crate) mod edit;
pub(crate) mod proto;
