//! Running commands against conversations in bulk: the statements a batch costs do not
//! grow with the number of commands in it (up to 1,000 rows per statement).
//!
//! A batch is one or more commands in one transaction, run in three steps:
//! 1. **load**: the conversation rows (which carry each conversation's last `seq`) and the
//!    messages the commands name, one statement each for the whole batch (and the log's
//!    last seq for the conversations of commands retrying after a lost race);
//! 2. **decide**: each command, in order, decides against its conversation's state in
//!    memory; its events are applied to a copy of that state, which becomes the state the
//!    next command on the same conversation sees (what savepoints gave, without a
//!    statement per command). A command that is refused, fails to apply or panics changes
//!    nothing and fails alone;
//! 3. **write**: every appended event in one multi-row insert, every touched conversation
//!    and message row in one multi-row upsert each.
//!
//! The group writer ([`super::group_commit`]) hands it everything that waits: a thousand
//! answers that start together cost a handful of statements each batch instead of a dozen
//! each. On PostgreSQL the batch holds its conversations' rows locked until it commits.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;

use entity::{conversation_events, conversations, messages};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::events::{event_to_row, Committed, Load};
use super::records::{
    conversation_from_row, conversation_to_row, message_from_row, message_to_row,
};
use super::{StoreError, StoreResult};
use crate::domain::events::{ConversationEvent, RecordedEvent};
use crate::domain::follow_ups::{FollowUpRules, NewJob};
use crate::domain::projection::{apply, ConversationState};

/// Rows per multi-row statement: far below SQLite's 32,766 bound parameters for the widest
/// table (messages, 27 columns).
const ROWS_PER_STATEMENT: usize = 1000;

/// A command waiting in a batch, with its error type erased.
pub(super) trait Pending: Send {
    fn conversation_id(&self) -> Uuid;
    fn actor_id(&self) -> Option<Uuid>;
    fn load(&self) -> &Load;
    /// Whether the expected seq must come from the log itself: after a lost race, the
    /// conversation row's `last_seq` is not trusted.
    fn seq_from_log(&self) -> bool;
    /// The command's events, or `Err(())` when it refused (the refusal is kept for
    /// [`Pending::deliver`]).
    fn decide(&mut self, state: &ConversationState) -> Result<Vec<ConversationEvent>, ()>;
    /// Tells the caller how its command ended, once the batch is committed (or not).
    fn deliver(self: Box<Self>, outcome: Outcome);
}

/// How one command of a batch ended.
pub(super) enum Outcome {
    /// Decided and applied: its events (none when it changed nothing) and the state after.
    Done(Committed),
    /// The command refused; its own error travels with it.
    Refused,
    Failed(StoreError),
}

/// One conversation's state while a batch runs.
#[derive(Default)]
struct Slot {
    state: ConversationState,
    last_seq: i64,
    touched: bool,
}

/// Runs `commands` in order in `txn` and writes what they appended, with the jobs that
/// follow from it (their number is returned beside the outcomes). `Err` is a failure of
/// the whole batch (a load or a write): nothing it wrote may be committed.
pub(super) async fn run(
    txn: &DatabaseTransaction,
    commands: &mut [Box<dyn Pending>],
    follow_ups: FollowUpRules,
) -> StoreResult<(Vec<Outcome>, usize)> {
    let mut slots = load(txn, Needs::of(commands)).await?;
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut appended: Vec<RecordedEvent> = Vec::new();
    let mut jobs: Vec<NewJob> = Vec::new();
    let now = super::now();
    for command in commands.iter_mut() {
        let slot = slots.entry(command.conversation_id()).or_default();
        let outcome = decide_and_apply(txn, &mut **command, slot, now).await;
        if let Outcome::Done(done) = &outcome {
            appended.extend(done.events.iter().cloned());
            jobs.extend(follow_ups.jobs_after(&done.state, &done.events));
        }
        outcomes.push(outcome);
    }
    if !appended.is_empty() {
        write(txn, &appended, &slots).await?;
    }
    if !jobs.is_empty() {
        super::jobs::insert_jobs(txn, &jobs, now).await?;
    }
    Ok((outcomes, jobs.len()))
}

/// What a batch's commands need to see.
struct Needs {
    conversations: Vec<Uuid>,
    /// Conversations whose last seq is read from the log (see [`Pending::seq_from_log`]).
    seqs_from_log: Vec<Uuid>,
    messages: BTreeSet<Uuid>,
    client_message_ids: BTreeSet<String>,
}

impl Needs {
    fn of(commands: &[Box<dyn Pending>]) -> Self {
        let conversations: BTreeSet<Uuid> = commands.iter().map(|c| c.conversation_id()).collect();
        let seqs_from_log: BTreeSet<Uuid> = commands
            .iter()
            .filter(|c| c.seq_from_log())
            .map(|c| c.conversation_id())
            .collect();
        Self {
            conversations: conversations.into_iter().collect(),
            seqs_from_log: seqs_from_log.into_iter().collect(),
            messages: commands
                .iter()
                .flat_map(|c| c.load().messages.iter().copied())
                .collect(),
            client_message_ids: commands
                .iter()
                .filter_map(|c| c.load().client_message_id.clone())
                .collect(),
        }
    }
}

/// Step 1: everything the commands need to see, one statement per kind for the batch.
async fn load(txn: &DatabaseTransaction, needs: Needs) -> StoreResult<HashMap<Uuid, Slot>> {
    let Needs {
        conversations: ids,
        seqs_from_log,
        messages: message_ids,
        client_message_ids: client_ids,
    } = needs;
    let mut slots: HashMap<Uuid, Slot> = ids.iter().map(|id| (*id, Slot::default())).collect();

    let mut select =
        conversations::Entity::find().filter(conversations::Column::Id.is_in(ids.clone()));
    if txn.get_database_backend() == DbBackend::Postgres {
        // Writers to one conversation queue here instead of racing for the same seq. Rows
        // are locked in id order (PostgreSQL locks after sorting), so two instances whose
        // groups share conversations never deadlock.
        select = select
            .order_by_asc(conversations::Column::Id)
            .lock_exclusive();
    }
    for row in select.all(txn).await.map_err(StoreError::from_db)? {
        if let Some(slot) = slots.get_mut(&row.id) {
            // The projection is written with the log, in the same transaction, so its
            // last seq is the log's; a lost race (a unique violation on the seq) retries
            // with the log's own figure.
            slot.last_seq = row.last_seq;
            slot.state.conversation = Some(conversation_from_row(row));
        }
    }

    let mut rows = Vec::new();
    if !message_ids.is_empty() {
        rows.extend(
            messages::Entity::find()
                .filter(messages::Column::Id.is_in(message_ids))
                .all(txn)
                .await
                .map_err(StoreError::from_db)?,
        );
    }
    if !client_ids.is_empty() {
        rows.extend(
            messages::Entity::find()
                .filter(messages::Column::ConversationId.is_in(ids.clone()))
                .filter(messages::Column::ClientMessageId.is_in(client_ids))
                .all(txn)
                .await
                .map_err(StoreError::from_db)?,
        );
    }
    // A message is seen only by commands on its own conversation.
    for row in rows {
        if let Some(slot) = slots.get_mut(&row.conversation_id) {
            slot.state.messages.insert(row.id, message_from_row(row));
        }
    }

    if seqs_from_log.is_empty() {
        return Ok(slots);
    }
    let last: Vec<(Uuid, i64)> = conversation_events::Entity::find()
        .select_only()
        .column(conversation_events::Column::ConversationId)
        .column_as(conversation_events::Column::Seq.max(), "last_seq")
        .filter(conversation_events::Column::ConversationId.is_in(seqs_from_log))
        .group_by(conversation_events::Column::ConversationId)
        .into_tuple()
        .all(txn)
        .await
        .map_err(StoreError::from_db)?;
    for (id, seq) in last {
        if let Some(slot) = slots.get_mut(&id) {
            slot.last_seq = seq;
        }
    }
    Ok(slots)
}

/// Step 2 for one command: decide, then apply to a copy that replaces the slot's state
/// only if every event applies.
async fn decide_and_apply(
    txn: &DatabaseTransaction,
    command: &mut dyn Pending,
    slot: &mut Slot,
    now: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    // A command that panics (a bug) fails alone; it has written nothing.
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| command.decide(&slot.state)));
    let events = match decided {
        Err(_) => {
            tracing::error!("a command panicked while deciding; it fails alone");
            return Outcome::Failed(StoreError::Db(sea_orm::DbErr::Custom(
                "the command failed unexpectedly".into(),
            )));
        }
        Ok(Err(())) => return Outcome::Refused,
        Ok(Ok(events)) if events.is_empty() => {
            return Outcome::Done(Committed {
                state: slot.state.clone(),
                events: vec![],
            })
        }
        Ok(Ok(events)) => events,
    };

    // Messages the events change that nobody loaded. Messages the events create are new
    // (their ids are minted by the server), so there is nothing to read for them.
    let missing: Vec<Uuid> = events
        .iter()
        .filter(|e| !e.creates_message())
        .filter_map(ConversationEvent::message_id)
        .filter(|id| !slot.state.messages.contains_key(id))
        .collect();
    let conversation_id = command.conversation_id();
    let mut next = slot.state.clone();
    if !missing.is_empty() {
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .filter(messages::Column::Id.is_in(missing))
            .all(txn)
            .await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    next.messages.insert(row.id, message_from_row(row));
                }
            }
            Err(err) => return Outcome::Failed(StoreError::from_db(err)),
        }
    }

    let mut recorded = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let event = RecordedEvent {
            conversation_id,
            seq: slot.last_seq + 1 + i as i64,
            actor_id: command.actor_id(),
            created_at: now,
            event,
        };
        if let Err(err) = apply(&mut next, &event) {
            return Outcome::Failed(err.into());
        }
        recorded.push(event);
    }
    slot.last_seq += recorded.len() as i64;
    slot.touched = true;
    slot.state = next;
    Outcome::Done(Committed {
        state: slot.state.clone(),
        events: recorded,
    })
}

/// Step 3: the log and the projections, a few multi-row statements for the whole batch.
async fn write(
    txn: &DatabaseTransaction,
    appended: &[RecordedEvent],
    slots: &HashMap<Uuid, Slot>,
) -> StoreResult<()> {
    for rows in appended.chunks(ROWS_PER_STATEMENT) {
        conversation_events::Entity::insert_many(rows.iter().map(event_to_row))
            .exec(txn)
            .await
            .map_err(StoreError::from_db)?;
    }
    let touched: Vec<&ConversationState> = slots
        .values()
        .filter(|s| s.touched)
        .map(|s| &s.state)
        .collect();
    write_projections(txn, &touched).await
}

/// Writes the conversation rows and every message row the applied events touched (or
/// removed) in `states`.
pub(super) async fn write_projections(
    db: &impl ConnectionTrait,
    states: &[&ConversationState],
) -> StoreResult<()> {
    let conversations: Vec<_> = states
        .iter()
        .filter_map(|s| s.conversation.as_ref())
        .collect();
    for rows in conversations.chunks(ROWS_PER_STATEMENT) {
        conversations::Entity::insert_many(rows.iter().map(|c| conversation_to_row(c)))
            .on_conflict(
                OnConflict::column(conversations::Column::Id)
                    .update_columns([
                        conversations::Column::Title,
                        conversations::Column::SystemPrompt,
                        conversations::Column::Model,
                        conversations::Column::UpdatedAt,
                        conversations::Column::LastSeq,
                        conversations::Column::MessageCount,
                        conversations::Column::DeletedAt,
                        conversations::Column::TitlePending,
                        conversations::Column::AgentId,
                    ])
                    .to_owned(),
            )
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }

    let mut present = Vec::new();
    let mut removed = Vec::new();
    for state in states.iter().filter(|s| s.conversation.is_some()) {
        for id in &state.dirty_messages {
            match state.messages.get(id) {
                Some(message) => present.push(message),
                None => removed.push(*id),
            }
        }
    }
    for ids in removed.chunks(ROWS_PER_STATEMENT) {
        messages::Entity::delete_many()
            .filter(messages::Column::Id.is_in(ids.iter().copied()))
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }
    for rows in present.chunks(ROWS_PER_STATEMENT) {
        messages::Entity::insert_many(rows.iter().map(|m| message_to_row(m)))
            .on_conflict(
                OnConflict::column(messages::Column::Id)
                    .update_columns([
                        messages::Column::Content,
                        messages::Column::Status,
                        messages::Column::Model,
                        messages::Column::PromptTokens,
                        messages::Column::CompletionTokens,
                        messages::Column::FallbackReason,
                        messages::Column::ToolCalls,
                        messages::Column::Citations,
                        messages::Column::FirstChunkMs,
                        messages::Column::TotalMs,
                        messages::Column::Validation,
                        messages::Column::ChecksRun,
                        messages::Column::ChecksFailed,
                        messages::Column::JudgeRelevance,
                        messages::Column::JudgeGroundedness,
                        messages::Column::Rating,
                        messages::Column::RatingComment,
                        messages::Column::RatedAt,
                        messages::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}
