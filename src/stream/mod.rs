//! Client streams: the connection state machine and SASL.

pub mod c2s;
pub mod sasl;
