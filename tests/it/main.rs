//! Integration tests: every file runs real `hearth` processes and talks XMPP to them over TCP and
//! TLS on 127.0.0.1. One binary for all of them (as ord does), so they build and link once.
//! Files are named by feature, like ejabberd's test suites.

mod harness;

mod admin;
mod bad_input;
mod basics;
mod blocking;
mod bookmarks;
mod carbons;
mod csi;
mod durability;
mod extdisco;
mod federation;
mod files;
mod limits;
mod login;
mod mam;
mod messages;
mod muc;
mod offline;
mod pep;
mod presence;
mod push;
mod register;
mod roster;
mod sasl2;
mod smacks;
mod upload;
mod vcard;
mod websocket;
