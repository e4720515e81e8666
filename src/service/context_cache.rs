//! What the next turn of a conversation sends upstream, kept in memory: the system prompt,
//! the model and the newest usable messages as far back as a context budget reaches, as of
//! one `seq` of the conversation's log. A turn in a conversation this instance served last
//! then reads nothing before it asks upstream.
//!
//! It is kept current by the one append path (every commit of this process is applied to
//! it, in `seq` order, and anything it cannot apply drops the conversation's entry), and it
//! is never trusted on its own: a turn built from an entry at `seq` n is used only if the
//! turn's own events land at n+1 and n+2 (see `ChatService::start_turn`), so an append by
//! another process or a missed one costs a read, never a wrong request.
//!
//! Bounded by bytes (`CONTEXT_CACHE_MB`); the least recently used conversation goes first.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use uuid::Uuid;

use crate::domain::events::{ConversationEvent, RecordedEvent};
use crate::domain::types::{MessageRole, MessageStatus};
use crate::llm::context::{estimate_tokens, ContextWindow};
use crate::llm::ChatMessage;
use crate::store::ContextRow;

/// A conversation's context as of one `seq`, from a read or from a cache entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextAt {
    pub last_seq: i64,
    /// The conversation's own model (`None`: the server's default).
    pub model: Option<String>,
    /// The system prompt, then the messages that fit, in order, ending with the turn's.
    pub messages: Vec<ChatMessage>,
    /// The turn's `clientMessageId` is known not to repeat an earlier one (or it has none):
    /// the turn will be appended, so its answer may be asked for before the commit says so.
    pub surely_new: bool,
}

struct Entry {
    owner_id: Uuid,
    last_seq: i64,
    system_prompt: Option<String>,
    model: Option<String>,
    /// Newest first: as far back as the budget reaches, and one more (the first that does
    /// not fit), so any next turn's window ends inside them unless `whole`.
    rows: Vec<ContextRow>,
    /// `rows` are every usable message of the conversation.
    whole: bool,
    /// Answers started and not yet finished, with their positions: a usable end goes in
    /// at its place.
    streaming: Vec<(Uuid, i64)>,
    /// Every `clientMessageId` of the conversation, when the entry has seen its whole log
    /// (it began with its creation); `None` after a read, which does not load them.
    client_ids: Option<HashSet<String>>,
    bytes: usize,
    used: u64,
}

impl Entry {
    /// Applies one event that comes right after `last_seq`; `false` if it cannot (the
    /// entry then no longer knows the context and must go).
    fn apply(&mut self, event: &RecordedEvent) -> bool {
        match &event.event {
            ConversationEvent::MessageAdded(added) => {
                if let (Some(ids), Some(id)) = (&mut self.client_ids, &added.client_message_id) {
                    ids.insert(id.clone());
                }
                if !added.content.is_empty() {
                    self.rows.insert(
                        0,
                        ContextRow {
                            id: added.message_id,
                            position: event.seq,
                            role: added.role,
                            content: added.content.clone(),
                            tool_calls: Vec::new(),
                        },
                    );
                }
            }
            ConversationEvent::StreamStarted(started) => {
                self.streaming.push((started.message_id, event.seq));
            }
            // The cache serves turns without an agent, whose context is text alone.
            ConversationEvent::ToolCalled(_) | ConversationEvent::ToolReturned(_) => {}
            // Checks and ratings are about answers, never sent to the model.
            ConversationEvent::AnswerValidated(_) | ConversationEvent::MessageRated(_) => {}
            ConversationEvent::StreamCompleted(done) => {
                let usable = done.status == MessageStatus::Complete && !done.content.is_empty();
                let started = self
                    .streaming
                    .iter()
                    .position(|(id, _)| *id == done.message_id)
                    .map(|at| self.streaming.swap_remove(at).1);
                match started {
                    // Not sent upstream: nothing to place.
                    _ if !usable => {}
                    // Started before this entry was read: where it goes is unknown.
                    None => return false,
                    Some(position) => {
                        let at = self.rows.partition_point(|r| r.position > position);
                        // Older than every kept row of a partial history: beyond the
                        // budget's reach.
                        if at < self.rows.len() || self.whole {
                            self.rows.insert(
                                at,
                                ContextRow {
                                    id: done.message_id,
                                    position,
                                    role: MessageRole::Assistant,
                                    content: done.content.clone(),
                                    tool_calls: Vec::new(),
                                },
                            );
                        }
                    }
                }
            }
            ConversationEvent::ConversationUpdated(updated) => {
                if let Some(prompt) = &updated.system_prompt {
                    self.system_prompt = (!prompt.is_empty()).then(|| prompt.clone());
                }
                if let Some(model) = &updated.model {
                    self.model = (!model.is_empty()).then(|| model.clone());
                }
            }
            // An edit or a deletion changes a message anywhere in the history, and a
            // deleted conversation has no next turn.
            ConversationEvent::MessageEdited(_)
            | ConversationEvent::MessageDeleted(_)
            | ConversationEvent::ConversationDeleted(_)
            | ConversationEvent::ConversationCreated(_) => return false,
        }
        self.last_seq = event.seq;
        true
    }

    /// Drops the rows no next turn can reach: those past the first that does not fit the
    /// budget beside the system prompt (as [`ContextWindow::offer`] decides; a turn's own
    /// message only leaves less room).
    fn trim(&mut self, budget_tokens: usize) {
        let mut remaining = budget_tokens.saturating_sub(
            self.system_prompt
                .as_deref()
                .filter(|p| !p.trim().is_empty())
                .map_or(0, estimate_tokens),
        );
        for (i, row) in self.rows.iter().enumerate() {
            let cost = estimate_tokens(&row.content);
            if cost > remaining && i > 0 {
                if i + 1 < self.rows.len() {
                    self.rows.truncate(i + 1);
                    self.whole = false;
                }
                break;
            }
            remaining = remaining.saturating_sub(cost);
        }
        self.bytes = std::mem::size_of::<Self>()
            + self.system_prompt.as_ref().map_or(0, String::len)
            + self
                .rows
                .iter()
                .map(|r| std::mem::size_of::<ContextRow>() + r.content.len())
                .sum::<usize>()
            + self
                .client_ids
                .iter()
                .flatten()
                .map(|id| std::mem::size_of::<String>() + id.len())
                .sum::<usize>();
    }
}

#[derive(Default)]
struct Entries {
    by_conversation: HashMap<Uuid, Entry>,
    bytes: usize,
    tick: u64,
}

impl Entries {
    fn remove(&mut self, conversation_id: Uuid) {
        if let Some(entry) = self.by_conversation.remove(&conversation_id) {
            self.bytes -= entry.bytes;
        }
    }

    /// Trims the entry, counts its bytes, and evicts the least recently used entries
    /// while over `max_bytes` (the one just written last of all).
    fn settle(&mut self, conversation_id: Uuid, budget_tokens: usize, max_bytes: usize) {
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.by_conversation.get_mut(&conversation_id) else {
            return;
        };
        let before = entry.bytes;
        entry.trim(budget_tokens);
        entry.used = tick;
        self.bytes = self.bytes - before + entry.bytes;
        while self.bytes > max_bytes {
            let Some(oldest) = self
                .by_conversation
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.remove(oldest);
        }
    }
}

pub struct ContextCache {
    budget_tokens: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

impl ContextCache {
    /// `max_bytes` 0: nothing is kept.
    pub fn new(budget_tokens: usize, max_bytes: usize) -> Self {
        Self {
            budget_tokens,
            max_bytes,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The context of a turn sending `text` (with `client_message_id`) in the conversation,
    /// if an entry holds all it needs and the conversation is `owner_id`'s.
    pub fn context(
        &self,
        conversation_id: Uuid,
        owner_id: Uuid,
        text: &str,
        client_message_id: Option<&str>,
    ) -> Option<ContextAt> {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        let entry = entries.by_conversation.get_mut(&conversation_id)?;
        if entry.owner_id != owner_id {
            return None;
        }
        entry.used = tick;
        let mut window = ContextWindow::new(entry.system_prompt.as_deref(), self.budget_tokens);
        window.offer(MessageRole::User, text);
        let full = entry
            .rows
            .iter()
            .any(|row| !window.offer(row.role, &row.content));
        let surely_new = match (client_message_id, &entry.client_ids) {
            (None, _) => true,
            (Some(id), Some(ids)) => !ids.contains(id),
            (Some(_), None) => false,
        };
        (full || entry.whole).then(|| ContextAt {
            last_seq: entry.last_seq,
            model: entry.model.clone(),
            messages: window.into_messages(),
            surely_new,
        })
    }

    /// Keeps what a read found as of `last_seq` (newest first; `whole` if it reached the
    /// conversation's first message), unless a newer entry is already there.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &self,
        conversation_id: Uuid,
        owner_id: Uuid,
        last_seq: i64,
        system_prompt: Option<String>,
        model: Option<String>,
        rows: Vec<ContextRow>,
        whole: bool,
    ) {
        if self.max_bytes == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries
            .by_conversation
            .get(&conversation_id)
            .is_some_and(|e| e.last_seq >= last_seq)
        {
            return;
        }
        entries.remove(conversation_id);
        entries.by_conversation.insert(
            conversation_id,
            Entry {
                owner_id,
                last_seq,
                system_prompt,
                model,
                rows,
                whole,
                streaming: Vec::new(),
                client_ids: None,
                bytes: 0,
                used: 0,
            },
        );
        entries.settle(conversation_id, self.budget_tokens, self.max_bytes);
    }

    /// Applies events just committed to the conversation (`owner_id`: its owner, for a
    /// conversation they create). Events an entry already holds are skipped; a gap, or an
    /// event it cannot apply, drops the entry.
    pub fn appended(
        &self,
        conversation_id: Uuid,
        owner_id: Option<Uuid>,
        events: &[RecordedEvent],
    ) {
        if self.max_bytes == 0 || events.is_empty() {
            return;
        }
        let mut entries = self.lock();
        for event in events {
            if let (ConversationEvent::ConversationCreated(created), Some(owner_id)) =
                (&event.event, owner_id)
            {
                entries.remove(conversation_id);
                entries.by_conversation.insert(
                    conversation_id,
                    Entry {
                        owner_id,
                        last_seq: event.seq,
                        system_prompt: created.system_prompt.clone().filter(|p| !p.is_empty()),
                        model: created.model.clone().filter(|m| !m.is_empty()),
                        rows: Vec::new(),
                        whole: true,
                        streaming: Vec::new(),
                        client_ids: Some(HashSet::new()),
                        bytes: 0,
                        used: 0,
                    },
                );
                continue;
            }
            let Some(entry) = entries.by_conversation.get_mut(&conversation_id) else {
                return;
            };
            if event.seq <= entry.last_seq {
                continue;
            }
            if event.seq != entry.last_seq + 1 || !entry.apply(event) {
                entries.remove(conversation_id);
                return;
            }
        }
        entries.settle(conversation_id, self.budget_tokens, self.max_bytes);
    }

    /// The bytes held, for tests and metrics.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::domain::events::*;
    use crate::domain::projection::{replay, ConversationState, MessageRecord};
    use crate::llm::context::{build_context, usable};

    const BUDGET: usize = 300;
    const OWNER: Uuid = Uuid::from_u128(7);
    const CONVERSATION: Uuid = Uuid::from_u128(1);

    /// A conversation's log, its projection, and a cache kept beside it.
    struct Log {
        events: Vec<RecordedEvent>,
        cache: ContextCache,
        rng: u64,
        streaming: Vec<Uuid>,
    }

    impl Log {
        fn new(max_bytes: usize) -> Self {
            let mut log = Self {
                events: Vec::new(),
                cache: ContextCache::new(BUDGET, max_bytes),
                rng: 0x9e37_79b9_7f4a_7c15,
                streaming: Vec::new(),
            };
            log.append(vec![ConversationEvent::ConversationCreated(
                ConversationCreated {
                    agent_id: None,
                    title_pending: false,
                    title: "t".into(),
                    system_prompt: Some("be brief".into()),
                    model: None,
                },
            )]);
            log
        }

        fn random(&mut self, below: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % below
        }

        fn text(&mut self) -> String {
            let len = self.random(5) * self.random(90);
            format!("m{}{}", self.events.len(), "x".repeat(len as usize))
        }

        fn state(&self) -> ConversationState {
            replay(&self.events).unwrap()
        }

        /// Commits `events` to the log and tells the cache, as the store's hook does.
        fn append(&mut self, events: Vec<ConversationEvent>) -> Vec<RecordedEvent> {
            let first = self.events.len() as i64 + 1;
            let recorded: Vec<_> = events
                .into_iter()
                .enumerate()
                .map(|(i, event)| RecordedEvent {
                    conversation_id: CONVERSATION,
                    seq: first + i as i64,
                    actor_id: Some(OWNER),
                    created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                    event,
                })
                .collect();
            self.events.extend(recorded.iter().cloned());
            self.cache.appended(CONVERSATION, Some(OWNER), &recorded);
            recorded
        }

        /// What a read of the whole projection gives, offered to the cache.
        fn read_into_cache(&self) {
            let state = self.state();
            let conversation = state.conversation.clone().unwrap();
            let rows = newest_first(&state)
                .into_iter()
                .map(|m| ContextRow {
                    id: m.id,
                    position: m.position,
                    role: m.role,
                    content: m.content.clone(),
                    tool_calls: Vec::new(),
                })
                .collect();
            self.cache.offer(
                CONVERSATION,
                OWNER,
                conversation.last_seq,
                conversation.system_prompt,
                conversation.model,
                rows,
                true,
            );
        }

        /// The context the whole history makes for a next message `text`.
        fn expected(&self, text: &str) -> ContextAt {
            let state = self.state();
            let conversation = state.conversation.clone().unwrap();
            let mut history: Vec<MessageRecord> = state.messages.values().cloned().collect();
            history.sort_by_key(|m| m.position);
            let mut turn = history.last().cloned().unwrap_or_else(|| MessageRecord {
                fallback_reason: None,
                tool_calls: Vec::new(),
                citations: Vec::new(),
                id: Uuid::nil(),
                conversation_id: CONVERSATION,
                position: 0,
                role: MessageRole::User,
                content: String::new(),
                status: MessageStatus::Complete,
                model: None,
                usage: None,
                client_message_id: None,
                instance_id: None,
                agent_id: None,
                first_chunk_ms: None,
                total_ms: None,
                validation: None,
                rating: None,
                created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                updated_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            });
            turn.id = Uuid::now_v7();
            turn.position = conversation.last_seq + 1;
            turn.role = MessageRole::User;
            turn.status = MessageStatus::Complete;
            turn.content = text.to_string();
            history.push(turn);
            ContextAt {
                last_seq: conversation.last_seq,
                model: conversation.model,
                messages: build_context(conversation.system_prompt.as_deref(), &history, BUDGET),
                surely_new: true,
            }
        }
    }

    fn newest_first(state: &ConversationState) -> Vec<MessageRecord> {
        let mut usable: Vec<_> = state
            .messages
            .values()
            .filter(|m| usable(m))
            .cloned()
            .collect();
        usable.sort_by_key(|m| std::cmp::Reverse(m.position));
        usable
    }

    #[test]
    fn what_the_cache_gives_is_what_the_whole_history_makes_whatever_the_log_does() {
        let mut log = Log::new(1 << 20);
        let mut hits = 0;
        for step in 0..2_000 {
            let text = log.text();
            match log.random(20) {
                // A turn: the user's message and its answer's start.
                0..=7 => {
                    let answer = Uuid::now_v7();
                    log.append(vec![
                        ConversationEvent::MessageAdded(MessageAdded {
                            message_id: Uuid::now_v7(),
                            role: MessageRole::User,
                            content: text,
                            client_message_id: None,
                        }),
                        ConversationEvent::StreamStarted(StreamStarted {
                            agent_id: None,
                            agent_version: None,
                            message_id: answer,
                            user_message_id: None,
                            model: "m".into(),
                            instance_id: None,
                        }),
                    ]);
                    log.streaming.push(answer);
                }
                // An answer ends, not always the oldest one, not always usable.
                8..=14 if !log.streaming.is_empty() => {
                    let at = log.random(log.streaming.len() as u64) as usize;
                    let answer = log.streaming.swap_remove(at);
                    let status = match log.random(4) {
                        0 => MessageStatus::Failed,
                        1 => MessageStatus::Cancelled,
                        _ => MessageStatus::Complete,
                    };
                    let content = if log.random(6) == 0 {
                        String::new()
                    } else {
                        text
                    };
                    log.append(vec![ConversationEvent::StreamCompleted(StreamCompleted {
                        model: None,
                        fallback_reason: None,
                        message_id: answer,
                        content,
                        status,
                        usage: None,
                        error: None,
                        finish_reason: None,
                        refusal: None,
                        first_chunk_ms: None,
                    })]);
                }
                15 => {
                    let long = "p".repeat(400);
                    let prompt = ["", "short", long.as_str()][log.random(3) as usize].to_string();
                    let model = ["", "other"][log.random(2) as usize].to_string();
                    let update = ConversationUpdated {
                        agent_id: None,
                        title_generated: false,
                        title: Some(format!("title {step}")),
                        system_prompt: (log.random(2) == 0).then_some(prompt),
                        model: (log.random(2) == 0).then_some(model),
                    };
                    log.append(vec![ConversationEvent::ConversationUpdated(update)]);
                }
                16 => {
                    let state = log.state();
                    let users: Vec<_> = state
                        .messages
                        .values()
                        .filter(|m| m.role == MessageRole::User)
                        .map(|m| m.id)
                        .collect();
                    if !users.is_empty() {
                        let id = users[log.random(users.len() as u64) as usize];
                        let event = if log.random(2) == 0 {
                            ConversationEvent::MessageEdited(MessageEdited {
                                message_id: id,
                                content: text,
                            })
                        } else {
                            ConversationEvent::MessageDeleted(MessageDeleted { message_id: id })
                        };
                        log.append(vec![event]);
                        assert!(
                            log.cache.context(CONVERSATION, OWNER, "q", None).is_none(),
                            "step {step}: an edit or a deletion leaves the entry in place"
                        );
                        log.read_into_cache();
                    }
                }
                _ => {}
            }
            let next = log.text();
            match log.cache.context(CONVERSATION, OWNER, &next, None) {
                Some(cached) => {
                    hits += 1;
                    assert_eq!(cached, log.expected(&next), "step {step}");
                }
                // An answer that started before the entry was read ended: the entry went.
                None => log.read_into_cache(),
            }
        }
        assert!(hits > 1_700, "the cache answered {hits} times of 2,000");
        assert!(log.cache.bytes() > 0);
    }

    #[test]
    fn an_entry_is_the_owners_only() {
        let log = Log::new(1 << 20);
        assert!(log.cache.context(CONVERSATION, OWNER, "hi", None).is_some());
        assert!(log
            .cache
            .context(CONVERSATION, Uuid::from_u128(8), "hi", None)
            .is_none());
    }

    #[test]
    fn a_gap_in_the_log_drops_the_entry_and_a_repeat_changes_nothing() {
        let mut log = Log::new(1 << 20);
        let added = log.append(vec![ConversationEvent::MessageAdded(MessageAdded {
            message_id: Uuid::now_v7(),
            role: MessageRole::User,
            content: "one".into(),
            client_message_id: None,
        })]);
        // Told again (a commit both applied by the hook and by the turn itself).
        log.cache.appended(CONVERSATION, None, &added);
        assert_eq!(
            log.cache.context(CONVERSATION, OWNER, "q", None),
            Some(log.expected("q"))
        );
        let mut later = added[0].clone();
        later.seq += 2;
        log.cache.appended(CONVERSATION, None, &[later]);
        assert!(log.cache.context(CONVERSATION, OWNER, "q", None).is_none());
    }

    #[test]
    fn rows_that_do_not_reach_far_enough_are_a_miss_not_a_shorter_context() {
        let log = Log::new(1 << 20);
        let long = "y".repeat(1_000);
        let question = "w".repeat(800);
        // Read for a long question: the window was full at the second row, and the read
        // stopped there.
        let rows = vec![
            ContextRow {
                id: Uuid::now_v7(),
                position: 3,
                role: MessageRole::User,
                content: "a".into(),
                tool_calls: Vec::new(),
            },
            ContextRow {
                id: Uuid::now_v7(),
                position: 2,
                role: MessageRole::User,
                content: long.clone(),
                tool_calls: Vec::new(),
            },
        ];
        log.cache
            .offer(CONVERSATION, OWNER, 5, None, None, rows.clone(), false);
        // A short question leaves room for both and more: the entry cannot say what is
        // older.
        assert!(log.cache.context(CONVERSATION, OWNER, "q", None).is_none());
        // One that fills the window within them: a hit.
        let cached = log
            .cache
            .context(CONVERSATION, OWNER, &question, None)
            .unwrap();
        assert_eq!(cached.messages.len(), 2);
        // The same rows as the whole history: a hit for any message.
        log.cache
            .offer(CONVERSATION, OWNER, 6, None, None, rows, true);
        assert_eq!(
            log.cache
                .context(CONVERSATION, OWNER, "q", None)
                .unwrap()
                .messages
                .len(),
            3
        );
        // An older read does not replace a newer entry.
        log.cache
            .offer(CONVERSATION, OWNER, 4, None, None, vec![], true);
        assert_eq!(
            log.cache
                .context(CONVERSATION, OWNER, "q", None)
                .unwrap()
                .last_seq,
            6
        );
    }

    #[test]
    fn a_client_message_id_is_known_new_only_where_the_entry_saw_the_whole_log() {
        let mut log = Log::new(1 << 20);
        log.append(vec![ConversationEvent::MessageAdded(MessageAdded {
            message_id: Uuid::now_v7(),
            role: MessageRole::User,
            content: "one".into(),
            client_message_id: Some("c-1".into()),
        })]);
        let surely_new = |log: &Log, id| {
            log.cache
                .context(CONVERSATION, OWNER, "q", Some(id))
                .unwrap()
                .surely_new
        };
        assert!(!surely_new(&log, "c-1"), "a repeat");
        assert!(surely_new(&log, "c-2"));
        // After a read, the entry does not know the conversation's earlier ids.
        log.cache
            .offer(CONVERSATION, OWNER, 9, None, None, vec![], true);
        assert!(!surely_new(&log, "c-2"));
        assert!(
            log.cache
                .context(CONVERSATION, OWNER, "q", None)
                .unwrap()
                .surely_new
        );
    }

    #[test]
    fn memory_stays_within_its_bound_and_the_least_recently_used_goes_first() {
        let row = |n: usize| ContextRow {
            id: Uuid::now_v7(),
            position: 1,
            role: MessageRole::User,
            content: "z".repeat(n),
            tool_calls: Vec::new(),
        };
        // Room for three entries of this size, not four.
        let probe = ContextCache::new(BUDGET, 1 << 20);
        probe.offer(CONVERSATION, OWNER, 1, None, None, vec![row(800)], true);
        let bound = probe.bytes() * 7 / 2;
        let cache = ContextCache::new(BUDGET, bound);
        let ids: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
        for id in &ids[..3] {
            cache.offer(*id, OWNER, 1, None, None, vec![row(800)], true);
        }
        // The first is used again: the second is now the oldest.
        assert!(cache.context(ids[0], OWNER, "q", None).is_some());
        cache.offer(ids[3], OWNER, 1, None, None, vec![row(800)], true);
        assert!(cache.bytes() <= bound, "{} bytes", cache.bytes());
        assert!(cache.context(ids[0], OWNER, "q", None).is_some());
        assert!(cache.context(ids[1], OWNER, "q", None).is_none());
        assert!(cache.context(ids[3], OWNER, "q", None).is_some());
        // Nothing is kept with no memory for it.
        let none = ContextCache::new(BUDGET, 0);
        none.offer(ids[0], OWNER, 1, None, None, vec![row(1)], true);
        assert!(none.context(ids[0], OWNER, "q", None).is_none());
        assert_eq!(none.bytes(), 0);
    }
}
