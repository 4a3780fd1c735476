//! Routing: which final recipients an address stands for, and where each
//! one goes. Everything here is decided from lookup tables at the time it
//! is asked (delivery time), so a changed table applies to mail already
//! queued.
//!
//! - [`table`]: Postfix lookup tables read from their text source
//!   (`hash:`/`texthash:`), picked up again when the file changes.
//! - [`aliases`]: the aliases(5) grammar; addresses only, commands and
//!   files refused.
//! - [`rewrite`]: virtual alias expansion (`user@domain`, `user`, catch-all
//!   `@domain`), local aliases, loops, limits, duplicates, and a trace of
//!   every step for `posthorn route explain`.
//! - [`transport`]: transport(5) lookup and the typed [`NextHop`].
//!
//! No I/O beyond reading table files; no SMTP, no queue.

pub mod aliases;
pub mod rewrite;
pub mod table;
pub mod transport;

pub use rewrite::{Expansion, Limits, RewriteError, Rewriter, Step};
pub use table::{Syntax, Table, TableError, TableSpec};
pub use transport::{NextHop, Route, Transport, TransportMaps};
