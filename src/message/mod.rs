//! The types every stage hands on.

pub mod header;
