//! What the knowledge service tells the rest of the server, carried by the room bus: a
//! document's progress goes to its owner's sockets (every socket listens to its user's own
//! room), and a changed knowledge base reaches the other instances, which drop its vectors.

use std::sync::Arc;

use uuid::Uuid;

use super::bus::{ClusterCommand, RoomBus};
use super::frames::{OutFrame, ServerFrame};
use crate::domain::knowledge::DocumentRecord;
use crate::service::knowledge::KnowledgeEvents;

pub struct BusKnowledgeEvents(pub Arc<dyn RoomBus>);

impl KnowledgeEvents for BusKnowledgeEvents {
    fn document_changed(&self, owner: Uuid, document: &DocumentRecord) {
        let frame = ServerFrame::DocumentStatus {
            knowledge_base_id: document.knowledge_base_id,
            document_id: document.id,
            status: document.status,
            progress: document.progress,
            error: document.error.clone(),
        };
        self.0.publish(owner, Arc::new(OutFrame::new(&frame)));
    }

    fn knowledge_changed(&self, knowledge_base_id: Uuid) {
        self.0
            .command(ClusterCommand::KnowledgeChanged { knowledge_base_id });
    }
}
