//! Streams: clients' (the connection state machine, SASL, stream management and client state)
//! and other servers'.

pub mod c2s;
pub mod csi;
pub mod s2s;
pub mod sasl;
pub mod smacks;
pub mod throttle;
