//! The room broadcast interface. Every live frame for a conversation goes through
//! [`RoomBus`]; the in-process implementation fans out with one tokio broadcast channel per
//! conversation. A multi-instance deployment can implement the same trait on PostgreSQL
//! LISTEN/NOTIFY without touching the hub or the sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use super::frames::OutFrame;

pub type RoomReceiver = broadcast::Receiver<Arc<OutFrame>>;

pub trait RoomBus: Send + Sync + 'static {
    /// Sends a frame to every current subscriber of the room. Never blocks: a subscriber
    /// that has fallen `capacity` frames behind loses frames and is told so (`Lagged`).
    fn publish(&self, conversation_id: Uuid, frame: Arc<OutFrame>);
    fn subscribe(&self, conversation_id: Uuid) -> RoomReceiver;
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
