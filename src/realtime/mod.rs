//! Live updates: the WebSocket protocol's frames, the room broadcast interface, and the hub
//! that runs streamed answers independently of any socket.

pub mod bus;
pub mod frames;
pub mod hub;
