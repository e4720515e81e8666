//! The room broadcast interface. Every live frame for a conversation goes through
//! [`RoomBus`]; the in-process implementation fans out with one tokio broadcast channel per
//! conversation. Several instances on PostgreSQL use `cluster::pg_bus`, which fans out the
//! same way locally and carries frames and [`ClusterCommand`]s to the other instances over
//! LISTEN/NOTIFY; the hub and the sockets do not know which one they have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use super::frames::OutFrame;
use crate::service::sessions::SessionsEnded;

pub type RoomReceiver = broadcast::Receiver<Arc<OutFrame>>;

/// What one instance asks of the others.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "command",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ClusterCommand {
    /// Stop this stream (its owner was checked by the instance that asks).
    Cancel { message_id: Uuid },
    /// Share the state of every running stream (see [`RoomBus::share_state`]): an instance
    /// that has just (re)connected learns the text of streams it has not seen start.
    Sync,
    /// Close these sessions' sockets (a logout, a password change or reset, a disabled
    /// account on the asking instance; the database already says so).
    EndSessions(SessionsEnded),
    /// An admin changed the model catalogue's settings: read them again.
    ModelsChanged,
    /// A knowledge base's passages changed: drop its cached vectors.
    KnowledgeChanged { knowledge_base_id: Uuid },
}

pub trait RoomBus: Send + Sync + 'static {
    /// Sends a frame to every current subscriber of the room, on every instance. Never
    /// blocks: a subscriber that has fallen `capacity` frames behind loses frames and is
    /// told so (`Lagged`).
    fn publish(&self, conversation_id: Uuid, frame: Arc<OutFrame>);
    fn subscribe(&self, conversation_id: Uuid) -> RoomReceiver;

    /// `stream_snapshot` frames of the conversation's streams that other instances run.
    fn remote_snapshots(&self, _conversation_id: Uuid) -> Vec<OutFrame> {
        Vec::new()
    }

    /// The `stream_snapshot` of one stream another instance runs, if it is running.
    fn remote_snapshot(&self, _message_id: Uuid) -> Option<OutFrame> {
        None
    }

    /// Gives the other instances the state of a stream this one runs (a `stream_snapshot`),
    /// in order with its chunks: call under the stream's lock.
    fn share_state(&self, _conversation_id: Uuid, _snapshot: Arc<OutFrame>) {}

    /// Sends a command to every other instance.
    fn command(&self, _command: ClusterCommand) {}

    /// The commands other instances send to this one; `Some` once.
    fn take_commands(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<ClusterCommand>> {
        None
    }
}

pub struct LocalRoomBus {
    rooms: Mutex<HashMap<Uuid, broadcast::Sender<Arc<OutFrame>>>>,
    capacity: usize,
}

impl LocalRoomBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity,
        }
    }
}

impl RoomBus for LocalRoomBus {
    fn publish(&self, conversation_id: Uuid, frame: Arc<OutFrame>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = rooms.get(&conversation_id) {
            if sender.send(frame).is_err() {
                // Nobody listens any more: forget the room so the map does not grow forever.
                rooms.remove(&conversation_id);
            }
        }
    }

    fn subscribe(&self, conversation_id: Uuid) -> RoomReceiver {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .entry(conversation_id)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::frames::ServerFrame;

    #[tokio::test]
    async fn frames_reach_every_subscriber_of_the_room_only() {
        let bus = LocalRoomBus::new(8);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut first = bus.subscribe(a);
        let mut second = bus.subscribe(a);
        let mut other = bus.subscribe(b);
        bus.publish(a, Arc::new(OutFrame::new(&ServerFrame::Pong)));
        assert_eq!(first.recv().await.unwrap().json, r#"{"type":"pong"}"#);
        assert_eq!(second.recv().await.unwrap().json, r#"{"type":"pong"}"#);
        assert!(other.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_instead_of_blocking() {
        let bus = LocalRoomBus::new(2);
        let room = Uuid::now_v7();
        let mut slow = bus.subscribe(room);
        for _ in 0..5 {
            bus.publish(room, Arc::new(OutFrame::new(&ServerFrame::Pong)));
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(3))
        ));
    }
}
