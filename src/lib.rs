//! hearth: a small XMPP server for a family or a small group, in one static binary.
//!
//! The server is this library; `src/main.rs` is its command line. It is a library so that the
//! fuzz targets in `fuzz/` can reach the parsers.
#![deny(clippy::await_holding_refcell_ref)]

pub mod admin;
pub mod config;
pub mod error;
pub mod jid;
pub mod listener;
pub mod modules;
pub mod router;
pub mod server;
pub mod session;
pub mod stanza;
pub mod storage;
pub mod stream;
pub mod tls;
pub mod xml;
