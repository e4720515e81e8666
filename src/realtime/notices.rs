//! What the knowledge and validation services tell the rest of the server, carried by the
//! room bus: a document's progress goes to its owner's sockets (every socket listens to its
//! user's own room), a changed knowledge base reaches the other instances, which drop its
//! vectors, and an answer's checks and ratings go to its conversation's room.

use std::sync::Arc;

use uuid::Uuid;

use super::bus::{ClusterCommand, RoomBus};
use super::frames::{OutFrame, ServerFrame};
use crate::domain::events::{ConversationEvent, RecordedEvent};
use crate::domain::knowledge::DocumentRecord;
use crate::domain::validation::Validation;
use crate::service::knowledge::KnowledgeEvents;
use crate::service::validation::ValidationEvents;

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

pub struct BusValidationEvents(pub Arc<dyn RoomBus>);

impl ValidationEvents for BusValidationEvents {
    fn validated(&self, conversation_id: Uuid, message_id: Uuid, validation: &Validation) {
        let frame = ServerFrame::MessageValidated {
            conversation_id,
            message_id,
            validation: validation.clone(),
        };
        self.0
            .publish(conversation_id, Arc::new(OutFrame::new(&frame)));
    }

    fn rated(&self, event: &RecordedEvent) {
        let ConversationEvent::MessageRated(_) = &event.event else {
            return;
        };
        // A live notice, not a replay: keyed `Other`, so it moves no socket's replay mark
        // (a frame of a running answer from another instance may still be on its way).
        let json = crate::api::models::event_json(event);
        let frame = OutFrame::new(&ServerFrame::Event { event: json });
        self.0.publish(event.conversation_id, Arc::new(frame));
    }
}
