//! Client streams: the connection state machine, SASL, stream management and client state.

pub mod c2s;
pub mod csi;
pub mod sasl;
pub mod smacks;
pub mod throttle;
