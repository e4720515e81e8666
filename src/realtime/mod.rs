//! Live updates: the WebSocket protocol's frames, the room broadcast interface, the hub that
//! runs streamed answers independently of any socket (its registry and scheduler), the
//! relay loop of one answer, and a running answer's state.

pub mod bus;
pub mod frames;
pub mod hub;
pub mod notices;
mod relay;
mod stream;
