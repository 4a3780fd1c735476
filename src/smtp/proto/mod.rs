//! SMTP protocol pieces with no I/O: everything here works on byte slices
//! and values, so it is tested with tables and fuzzed without sockets.
//!
//! - `reply`: the `Reply` value every verb handler returns.
//! - `command`: command lines → `Command`, parse errors → replies.
//! - `address`: the `<local@domain>` path grammar and its limits.
//! - `line`: splitting client input into command lines, with a length limit.
//! - `data`: the DATA decoder (end of data, dot-unstuffing, bare CR/LF),
//!   also used for the octets of BDAT chunks.

pub mod address;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;
