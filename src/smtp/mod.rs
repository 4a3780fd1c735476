//! SMTP: the sans-IO protocol layer, the server and the relay client.

pub(crate) mod client;
pub mod proto;
pub(crate) mod server;
