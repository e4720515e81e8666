//! The room bus across instances, on PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Every frame published here goes to this instance's own rooms at once (as the in-process
//! bus does) and, through one publishing connection, to every other instance, whose
//! listening connection hands it to its rooms. No Redis, no broker: the database we have.
//!
//! - **Alone, silent.** A lone instance sends no notifications for its frames: nobody would
//!   read them. Every instance announces itself as it starts (a `Sync` command, before it
//!   serves anyone); hearing another instance marks [`Peers`] before the running streams'
//!   state is shared, so the newcomer holds each stream whole, and every frame after that
//!   goes out. Should the announcement be lost, the lease table tells within one keep-alive
//!   tick, and the newcomer asks for the state of any stream it first sees mid-way.
//! - **Order.** One connection publishes, in the order frames were published, and
//!   PostgreSQL delivers one session's notifications in order; a stream's frames are
//!   published under its lock. So each instance receives each stream's frames in order.
//! - **Batching.** The publisher drains everything waiting into as few notifications as fit
//!   (a payload holds at most 8,000 bytes), with no added delay: frames wait only while the
//!   previous notification is being sent. Never inside the event-append transaction: a
//!   transaction with a notification takes a cluster-wide lock at commit.
//! - **Large frames** (a `stream_complete` of a long answer) are split into fragments that
//!   follow each other in one sender's order, and joined by the receiver.
//! - **Gaps.** Each payload carries its sender's counter; a receiver that sees a counter
//!   jump, or whose listening connection drops, asks every instance for the state of its
//!   streams ([`ClusterCommand::Sync`]) and reads from the database how the streams it was
//!   following ended. Sockets then get a `stream_snapshot` (the whole text so far) or the
//!   `stream_complete` they missed.
//! - **Snapshots of remote streams.** Each instance keeps the text of the streams other
//!   instances run, from their frames (a mirror). A socket that joins here gets its
//!   `stream_snapshot` from the mirror, taken under the same lock that hands frames to the
//!   rooms, so snapshot and live chunks meet without a gap or a repeat, as for local streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::types::ToolCallRecord;
use crate::metrics::Metrics;
use crate::realtime::bus::{ClusterCommand, LocalRoomBus, RoomBus, RoomReceiver};
use crate::realtime::frames::{FrameKey, OutFrame, ServerFrame};
use crate::service::peers::Peers;
use crate::store::Store;

/// The one channel every instance listens on.
pub const CHANNEL: &str = "chat_bus";
/// `application_name` of the listening connection (operators and tests can find it).
pub const LISTENER_NAME: &str = "chat-bus-listener";
/// PostgreSQL refuses payloads of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// Notifications sent per statement at most.
const PAYLOADS_PER_STATEMENT: usize = 16;

pub struct PgRoomBus {
    instance: Uuid,
    local: LocalRoomBus,
    /// Lines for the publisher, in publish order.
    outbound: Outbound,
    mirror: Mutex<Mirror>,
    receiving: Mutex<Receiving>,
    commands: mpsc::UnboundedSender<ClusterCommand>,
    commands_out: Mutex<Option<mpsc::UnboundedReceiver<ClusterCommand>>>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Told when another instance is first heard from.
    peers: Peers,
    /// For the tasks a resync spawns.
    me: std::sync::Weak<PgRoomBus>,
}

impl PgRoomBus {
    /// Connects the publisher and the listener (on the store's PostgreSQL database) and
    /// returns once this instance is listening.
    pub async fn start(
        instance: Uuid,
        store: Store,
        capacity: usize,
        metrics: Arc<Metrics>,
        peers: Peers,
    ) -> anyhow::Result<Arc<Self>> {
        let options = store
            .connection()
            .get_postgres_connection_pool()
            .connect_options()
            .as_ref()
            .clone();
        let (outbound, lines) = Outbound::new(MAX_QUEUED_LINES);
        let (commands, commands_out) = mpsc::unbounded_channel();
        let bus = Arc::new_cyclic(|me| Self {
            instance,
            local: LocalRoomBus::new(capacity),
            outbound,
            mirror: Mutex::new(Mirror::default()),
            receiving: Mutex::new(Receiving::default()),
            commands,
            commands_out: Mutex::new(Some(commands_out)),
            store,
            metrics,
            peers,
            me: me.clone(),
        });
        tokio::spawn(publish(
            options.clone().application_name("chat-bus-publisher"),
            instance,
            lines,
            bus.metrics.clone(),
        ));
        let (ready, listening) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(
            bus.clone(),
            options.application_name(LISTENER_NAME),
            ready,
        ));
        tokio::time::timeout(Duration::from_secs(10), listening)
            .await
            .map_err(|_| anyhow::anyhow!("the bus listener did not connect within 10 s"))?
            .map_err(|_| anyhow::anyhow!("the bus listener stopped"))?;
        Ok(bus)
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_line(&self, line: String) {
        if !self.outbound.push(line) {
            self.metrics.bus_dropped.inc();
        }
    }

    /// One notification from another instance (or this one's, which it skips).
    fn receive(&self, payload: &str) {
        let Some((header, body)) = payload.split_once('\n') else {
            return;
        };
        let Some((sender, counter)) = header.split_once(' ') else {
            return;
        };
        let (Ok(sender), Ok(counter)) = (sender.parse::<Uuid>(), counter.parse::<u64>()) else {
            tracing::warn!("ignoring a malformed bus notification");
            return;
        };
        if sender == self.instance {
            return;
        }
        self.peers.mark();
        self.metrics.bus_received.inc();
        let lines = {
            let mut receiving = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
            if receiving.gap(sender, counter) {
                // Notifications were lost (they are not queued for a dropped listener, and a
                // sender whose queue overflowed skips a counter value).
                tracing::warn!(%sender, counter, "gap in the bus; resynchronising");
                receiving.partial.remove(&sender);
                self.resync();
            }
            receiving.join(sender, body)
        };
        for line in lines {
            self.dispatch(&line);
        }
    }

    fn dispatch(&self, line: &str) {
        let Some((kind, rest)) = line.split_at_checked(1) else {
            return;
        };
        let rest = rest.trim_start_matches(' ');
        match kind {
            "F" | "S" => {
                let Some((conversation, json)) = rest.split_once(' ') else {
                    return;
                };
                let Ok(conversation_id) = conversation.parse::<Uuid>() else {
                    return;
                };
                let Ok((out, frame)) = OutFrame::received(json.to_string()) else {
                    tracing::warn!("ignoring a bus frame that does not parse");
                    return;
                };
                // Mirror and rooms change together, under the mirror's lock: a socket's
                // snapshot (taken under it) and its live frames meet exactly.
                let mut mirror = self.mirror();
                let seen = if kind == "F" {
                    mirror.apply(&frame, Instant::now())
                } else {
                    Seen::deliver(mirror.adopt(&frame))
                };
                if seen.deliver {
                    self.local.publish(conversation_id, Arc::new(out));
                }
                drop(mirror);
                if seen.ask_state {
                    self.command(ClusterCommand::Sync);
                }
            }
            "C" => match serde_json::from_str::<ClusterCommand>(rest) {
                Ok(command) => {
                    let _ = self.commands.send(command);
                }
                Err(_) => tracing::warn!("ignoring a bus command that does not parse"),
            },
            _ => tracing::warn!("ignoring a bus line of unknown kind"),
        }
    }

    /// After a gap: every instance shares its streams' state, and the streams this one was
    /// following that ended meanwhile are read from the log.
    fn resync(&self) {
        self.command(ClusterCommand::Sync);
        let following: Vec<(Uuid, Uuid)> = self
            .mirror()
            .streams
            .iter()
            .map(|(id, s)| (*id, s.conversation_id))
            .collect();
        if following.is_empty() {
            return;
        }
        let store = self.store.clone();
        let bus = self.me.clone();
        tokio::spawn(async move {
            for (message_id, conversation_id) in following {
                let completion = match store.find_completion(conversation_id, message_id).await {
                    Ok(completion) => completion,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading a stream's end after a bus gap failed");
                        continue;
                    }
                };
                let (Some((seq, done)), Some(bus)) = (completion, bus.upgrade()) else {
                    continue;
                };
                let mut mirror = bus.mirror();
                if let Some(remote) = mirror.streams.remove(&message_id) {
                    let frame = ServerFrame::StreamComplete {
                        conversation_id,
                        message_id,
                        status: done.status,
                        content: done.content,
                        usage: done.usage,
                        error: done.error,
                        seq,
                        // What the mirror saw of them (the stream's own frame was lost).
                        tool_calls: remote.tool_calls,
                        // Frames do not carry them; the committed message does.
                        citations: Vec::new(),
                    };
                    bus.local
                        .publish(conversation_id, Arc::new(OutFrame::new(&frame)));
                }
            }
        });
    }
}

impl RoomBus for PgRoomBus {
    fn publish(&self, conversation_id: Uuid, frame: Arc<OutFrame>) {
        // Alone, nobody is listening: a lone instance sends no notifications for its frames.
        // An instance that starts announces itself (a `Sync` command) before it serves
        // anyone, and hearing it marks `peers` before the state of every running stream is
        // shared, under each stream's lock; so every chunk after that state is published.
        if self.peers.seen() {
            self.send_line(format!("F {conversation_id} {}", frame.json));
        }
        if let FrameKey::Complete { message_id, .. } = frame.key {
            // This instance ended a stream another one ran (a dead instance's, recovered
            // here): its mirror forgets it too, under the lock snapshots are taken under, so
            // no socket that joins afterwards gets a snapshot of an ended answer.
            let mut mirror = self.mirror();
            mirror.streams.remove(&message_id);
            self.local.publish(conversation_id, frame);
            return;
        }
        self.local.publish(conversation_id, frame);
    }

    fn subscribe(&self, conversation_id: Uuid) -> RoomReceiver {
        self.local.subscribe(conversation_id)
    }

    fn remote_snapshots(&self, conversation_id: Uuid) -> Vec<OutFrame> {
        let mirror = self.mirror();
        mirror
            .streams
            .iter()
            .filter(|(_, s)| s.conversation_id == conversation_id)
            .filter_map(|(id, s)| s.snapshot(*id))
            .collect()
    }

    fn remote_snapshot(&self, message_id: Uuid) -> Option<OutFrame> {
        let mirror = self.mirror();
        mirror
            .streams
            .get(&message_id)
            .and_then(|s| s.snapshot(message_id))
    }

    fn share_state(&self, conversation_id: Uuid, snapshot: Arc<OutFrame>) {
        self.send_line(format!("S {conversation_id} {}", snapshot.json));
    }

    fn command(&self, command: ClusterCommand) {
        let json = serde_json::to_string(&command).expect("commands serialise");
        self.send_line(format!("C {json}"));
    }

    fn take_commands(&self) -> Option<mpsc::UnboundedReceiver<ClusterCommand>> {
        self.commands_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The text of the streams other instances run, as far as their frames tell.
#[derive(Default)]
struct Mirror {
    streams: HashMap<Uuid, RemoteStream>,
}

struct RemoteStream {
    conversation_id: Uuid,
    content: String,
    next_index: u64,
    /// Whether `content` holds every chunk below `next_index` (not so for a stream first
    /// seen mid-way, or after lost notifications, until its owner shares its state). The
    /// rooms get no chunks of a stream that is not whole: their sockets would see a gap.
    whole: bool,
    /// When this instance last asked for the stream's state.
    asked: Option<Instant>,
    /// Its tool calls as their frames told them, and the last tool event's `seq`.
    tool_calls: Vec<ToolCallRecord>,
    tool_seq: i64,
}

/// What to do with a frame from another instance.
struct Seen {
    /// Hand it to this instance's rooms.
    deliver: bool,
    /// Ask the owner for the stream's state (a chunk of a stream not held whole).
    ask_state: bool,
}

impl Seen {
    fn deliver(deliver: bool) -> Self {
        Self {
            deliver,
            ask_state: false,
        }
    }
}

/// How often a stream's state is asked for while it is not held whole.
const ASK_STATE_EVERY: Duration = Duration::from_millis(250);

impl RemoteStream {
    fn snapshot(&self, message_id: Uuid) -> Option<OutFrame> {
        self.whole.then(|| {
            OutFrame::new(&ServerFrame::StreamSnapshot {
                conversation_id: self.conversation_id,
                message_id,
                content: self.content.clone(),
                next_index: self.next_index,
                tool_calls: self.tool_calls.clone(),
                tool_seq: self.tool_seq,
            })
        })
    }
}

impl Mirror {
    /// Follows a live frame.
    fn apply(&mut self, frame: &ServerFrame, now: Instant) -> Seen {
        match frame {
            ServerFrame::StreamStart {
                conversation_id,
                message_id,
                ..
            } => {
                self.streams.insert(
                    *message_id,
                    RemoteStream {
                        conversation_id: *conversation_id,
                        content: String::new(),
                        next_index: 0,
                        whole: true,
                        asked: None,
                        tool_calls: Vec::new(),
                        tool_seq: 0,
                    },
                );
                Seen::deliver(true)
            }
            ServerFrame::StreamChunk {
                conversation_id,
                message_id,
                index,
                delta,
            } => {
                let stream = self
                    .streams
                    .entry(*message_id)
                    .or_insert_with(|| RemoteStream {
                        conversation_id: *conversation_id,
                        content: String::new(),
                        next_index: *index,
                        whole: *index == 0,
                        asked: None,
                        tool_calls: Vec::new(),
                        tool_seq: 0,
                    });
                if *index == stream.next_index {
                    stream.content.push_str(delta);
                } else {
                    stream.whole = false;
                }
                stream.next_index = stream.next_index.max(index + 1);
                if stream.whole {
                    return Seen::deliver(true);
                }
                let ask_state = stream
                    .asked
                    .is_none_or(|at| now.duration_since(at) >= ASK_STATE_EVERY);
                if ask_state {
                    stream.asked = Some(now);
                }
                Seen {
                    deliver: false,
                    ask_state,
                }
            }
            ServerFrame::StreamComplete { message_id, .. } => {
                self.streams.remove(message_id);
                Seen::deliver(true)
            }
            ServerFrame::ToolCall {
                message_id,
                call_id,
                name,
                arguments,
                seq,
                agent_id,
                parent_call_id,
                ..
            } => {
                if let Some(stream) = self.streams.get_mut(message_id) {
                    if *seq > stream.tool_seq {
                        stream.tool_seq = *seq;
                        stream.tool_calls.push(ToolCallRecord {
                            call_id: call_id.clone(),
                            name: name.clone(),
                            arguments: arguments.clone(),
                            step: 0,
                            ok: None,
                            content: None,
                            agent_id: *agent_id,
                            parent_call_id: parent_call_id.clone(),
                            answered_by: None,
                            answered_by_version: None,
                        });
                    }
                }
                Seen::deliver(true)
            }
            ServerFrame::ToolResult {
                message_id,
                call_id,
                ok,
                content,
                seq,
                ..
            } => {
                if let Some(stream) = self.streams.get_mut(message_id) {
                    if *seq > stream.tool_seq {
                        stream.tool_seq = *seq;
                        if let Some(call) =
                            stream.tool_calls.iter_mut().find(|c| &c.call_id == call_id)
                        {
                            call.ok = Some(*ok);
                            call.content = Some(content.clone());
                        }
                    }
                }
                Seen::deliver(true)
            }
            _ => Seen::deliver(true),
        }
    }

    /// Takes a stream's state from its owner. `true` when it told this instance something
    /// new (then the rooms get the snapshot too: their sockets may have missed chunks).
    fn adopt(&mut self, frame: &ServerFrame) -> bool {
        let ServerFrame::StreamSnapshot {
            conversation_id,
            message_id,
            content,
            next_index,
            tool_calls,
            tool_seq,
        } = frame
        else {
            return false;
        };
        let current = self.streams.get(message_id);
        if current
            .is_some_and(|s| s.whole && s.next_index >= *next_index && s.tool_seq >= *tool_seq)
        {
            return false;
        }
        self.streams.insert(
            *message_id,
            RemoteStream {
                conversation_id: *conversation_id,
                content: content.clone(),
                next_index: *next_index,
                whole: true,
                asked: None,
                tool_calls: tool_calls.clone(),
                tool_seq: *tool_seq,
            },
        );
        true
    }
}

/// Per sender: the last payload counter, and a line split over payloads so far.
#[derive(Default)]
struct Receiving {
    counters: HashMap<Uuid, u64>,
    partial: HashMap<Uuid, String>,
}

impl Receiving {
    /// Records `sender`'s payload `counter`; `true` when payloads before it were missed.
    fn gap(&mut self, sender: Uuid, counter: u64) -> bool {
        let previous = self.counters.insert(sender, counter);
        previous.is_some_and(|p| counter != p + 1)
    }

    /// The whole lines of a payload body: `+` lines continue a long line, `=` ends it.
    fn join(&mut self, sender: Uuid, body: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for line in body.split('\n') {
            if let Some(part) = line.strip_prefix('+') {
                self.partial.entry(sender).or_default().push_str(part);
            } else if let Some(last) = line.strip_prefix('=') {
                let mut whole = self.partial.remove(&sender).unwrap_or_default();
                whole.push_str(last);
                lines.push(whole);
            } else if !line.is_empty() {
                lines.push(line.to_string());
            }
        }
        lines
    }
}

/// Packs lines into payloads of at most [`MAX_PAYLOAD`] bytes, each headed by the sender
/// and its counter; a line too long for one payload is split (at character boundaries).
/// Frame JSON has no raw newlines (serde escapes them), so a newline ends a line.
fn pack(instance: Uuid, counter: &mut u64, lines: &[String]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    let header = |counter: &mut u64| {
        *counter += 1;
        format!("{instance} {counter}\n")
    };
    let room = MAX_PAYLOAD - 60;
    for line in lines {
        if line.len() < room {
            if !current.is_empty() && current.len() + line.len() + 1 > MAX_PAYLOAD {
                payloads.push(std::mem::take(&mut current));
            }
            if current.is_empty() {
                current = header(counter);
            }
            current.push_str(line);
            current.push('\n');
            continue;
        }
        // Too long for any payload: fragments, each in a payload of its own.
        let mut rest = line.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(room - 1);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (part, tail) = rest.split_at(cut);
            rest = tail;
            if !current.is_empty() {
                payloads.push(std::mem::take(&mut current));
            }
            let mut payload = header(counter);
            payload.push(if rest.is_empty() { '=' } else { '+' });
            payload.push_str(part);
            payloads.push(payload);
        }
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// Lines waiting for the publisher: at most `limit` of them. While PostgreSQL is out of
/// reach the publisher cannot drain them, and an unbounded queue would grow by every frame
/// of every stream; past the limit lines are dropped, and the next notification skips a
/// counter value so that every receiver sees the gap and resynchronises.
struct Outbound {
    tx: mpsc::UnboundedSender<String>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
    limit: usize,
}

/// The publisher's end of [`Outbound`].
struct Inbound {
    rx: mpsc::UnboundedReceiver<String>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

/// Lines the publisher may have waiting before new ones are dropped (at 200 streams of 50
/// tokens a second, over six seconds of frames).
const MAX_QUEUED_LINES: usize = 65_536;

impl Outbound {
    fn new(limit: usize) -> (Self, Inbound) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            Self {
                tx,
                queued: queued.clone(),
                dropped: dropped.clone(),
                limit,
            },
            Inbound {
                rx,
                queued,
                dropped,
            },
        )
    }

    /// Queues a line; `false` when the queue is full and the line was dropped.
    fn push(&self, line: String) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued.load(Relaxed) >= self.limit {
            self.dropped.store(true, Relaxed);
            return false;
        }
        self.queued.fetch_add(1, Relaxed);
        // The publisher lives as long as the runtime; a send can only fail at its end.
        let _ = self.tx.send(line);
        true
    }
}

impl Inbound {
    /// Waits for a line, then takes every line waiting, up to `max`.
    async fn take(&mut self, into: &mut Vec<String>, max: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(line) = self.rx.recv().await else {
            return false;
        };
        into.push(line);
        while into.len() < max {
            match self.rx.try_recv() {
                Ok(line) => into.push(line),
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(into.len(), Relaxed);
        true
    }

    /// Whether lines were dropped since the last call.
    fn lost_some(&self) -> bool {
        self.dropped
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The publisher: drains the queue into notifications on one connection, reconnecting
/// with backoff. A notification that cannot be sent for a minute is dropped (and the
/// receivers see the gap in the counter).
async fn publish(
    options: PgConnectOptions,
    instance: Uuid,
    mut lines: Inbound,
    metrics: Arc<Metrics>,
) {
    let mut connection: Option<PgConnection> = None;
    let mut counter = 0u64;
    let mut waiting = Vec::new();
    while lines.take(&mut waiting, 4096).await {
        if lines.lost_some() {
            // Skipped on purpose: the receivers see a gap and resynchronise.
            counter += 1;
        }
        let payloads = pack(instance, &mut counter, &waiting);
        waiting.clear();
        for group in payloads.chunks(PAYLOADS_PER_STATEMENT) {
            let sql = (1..=group.len())
                .map(|i| format!("pg_notify('{CHANNEL}', ${i})"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT {sql}");
            let mut backoff = Duration::from_millis(50);
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if connection.is_none() {
                    match options.connect().await {
                        Ok(c) => connection = Some(c),
                        Err(err) => tracing::warn!(error = %err, "bus publisher cannot connect"),
                    }
                }
                if let Some(c) = connection.as_mut() {
                    // Built from a constant and placeholder numbers only; the payloads are
                    // bound parameters.
                    let mut query =
                        sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(sql.as_str()));
                    for payload in group {
                        query = query.bind(payload.as_str());
                    }
                    match query.execute(&mut *c).await {
                        Ok(_) => {
                            metrics.bus_notifications.inc_by(group.len() as u64);
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "bus publish failed; reconnecting");
                            if let Some(c) = connection.take() {
                                let _ = c.close().await;
                            }
                        }
                    }
                }
                if tokio::time::Instant::now() > give_up {
                    tracing::error!(
                        notifications = group.len(),
                        "bus publisher gave up; other instances will resynchronise"
                    );
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The listener: one connection that LISTENs, reconnecting with backoff. Every connection
/// after the first starts with a resync (notifications sent meanwhile are lost).
async fn listen(
    bus: Arc<PgRoomBus>,
    options: PgConnectOptions,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match connect_listener(&options).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "bus listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        match ready.take() {
            // Streams that started before this instance: their owners share their state.
            Some(ready) => {
                bus.command(ClusterCommand::Sync);
                let _ = ready.send(());
            }
            None => {
                bus.metrics.bus_reconnects.inc();
                tracing::warn!("bus listener reconnected; resynchronising");
                bus.receiving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .partial
                    .clear();
                bus.resync();
            }
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => bus.receive(notification.payload()),
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "bus listener lost its connection");
                    break;
                }
            }
        }
    }
}

async fn connect_listener(options: &PgConnectOptions) -> anyhow::Result<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(receiving: &mut Receiving, payloads: &[String]) -> Vec<String> {
        payloads
            .iter()
            .flat_map(|p| {
                let (header, body) = p.split_once('\n').unwrap();
                let sender: Uuid = header.split_once(' ').unwrap().0.parse().unwrap();
                receiving.join(sender, body)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_lines_and_says_so_once() {
        let (outbound, mut inbound) = Outbound::new(2);
        assert!(outbound.push("F a 1".into()));
        assert!(outbound.push("F a 2".into()));
        assert!(
            !outbound.push("F a 3".into()),
            "the third line is over the limit"
        );
        let mut lines = Vec::new();
        assert!(inbound.take(&mut lines, 10).await);
        assert_eq!(lines, ["F a 1", "F a 2"]);
        assert!(inbound.lost_some());
        assert!(!inbound.lost_some(), "told once");
        assert!(
            outbound.push("F a 4".into()),
            "room again once the publisher took them"
        );
    }

    #[test]
    fn a_skipped_counter_is_a_gap_and_the_first_payload_is_not() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut receiving = Receiving::default();
        assert!(!receiving.gap(a, 7), "joining mid-way is not a gap");
        assert!(!receiving.gap(a, 8));
        assert!(!receiving.gap(b, 1), "each sender counts on its own");
        assert!(receiving.gap(a, 10), "payload 9 was missed");
        assert!(!receiving.gap(a, 11));
    }

    #[test]
    fn lines_pack_into_few_payloads_under_the_limit_and_come_out_in_order() {
        let instance = Uuid::now_v7();
        let mut counter = 0;
        let lines: Vec<String> = (0..1000).map(|i| format!("F x {{\"i\":{i}}}")).collect();
        let payloads = pack(instance, &mut counter, &lines);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        assert!(
            payloads.len() <= 4,
            "{} payloads for 1,000 small lines",
            payloads.len()
        );
        assert_eq!(counter, payloads.len() as u64);
        assert_eq!(unpack(&mut Receiving::default(), &payloads), lines);
    }

    #[test]
    fn a_line_longer_than_a_payload_is_split_and_joined_whole() {
        let instance = Uuid::now_v7();
        let mut counter = 0;
        // Multi-byte characters, so a naive byte split would break one.
        let long = format!("F x {}", "é".repeat(20_000));
        let lines = vec!["F x a".to_string(), long.clone(), "F x b".to_string()];
        let payloads = pack(instance, &mut counter, &lines);
        assert!(payloads.len() >= 6, "{}", payloads.len());
        assert!(payloads.iter().all(|p| p.len() < 8000));
        assert_eq!(unpack(&mut Receiving::default(), &payloads), lines);
    }

    #[test]
    fn the_mirror_follows_a_stream_and_snapshots_only_what_it_holds_whole() {
        let (c, m) = (Uuid::now_v7(), Uuid::now_v7());
        let chunk = |index, delta: &str| ServerFrame::StreamChunk {
            conversation_id: c,
            message_id: m,
            index,
            delta: delta.into(),
        };
        let mut mirror = Mirror::default();
        let now = Instant::now();
        // First seen mid-way: no snapshot and no chunks for the rooms until the owner
        // shares its state, which is asked for (not on every chunk).
        let seen = mirror.apply(&chunk(3, "d"), now);
        assert!(!seen.deliver && seen.ask_state);
        assert!(mirror.streams[&m].snapshot(m).is_none());
        let seen = mirror.apply(&chunk(4, "e"), now);
        assert!(!seen.deliver && !seen.ask_state);
        assert!(
            mirror
                .apply(&chunk(5, "f"), now + ASK_STATE_EVERY)
                .ask_state
        );
        let state = ServerFrame::StreamSnapshot {
            conversation_id: c,
            message_id: m,
            content: "abcd".into(),
            next_index: 4,
            tool_calls: vec![],
            tool_seq: 0,
        };
        assert!(mirror.adopt(&state));
        assert!(!mirror.adopt(&state), "the same state again is nothing new");
        assert!(mirror.apply(&chunk(4, "e"), now).deliver);
        let snapshot = mirror.streams[&m].snapshot(m).unwrap();
        assert!(
            snapshot.json.contains("\"content\":\"abcde\""),
            "{}",
            snapshot.json
        );
        assert!(
            snapshot.json.contains("\"nextIndex\":5"),
            "{}",
            snapshot.json
        );
        // A lost chunk: the rooms get nothing more until the state comes.
        assert!(!mirror.apply(&chunk(6, "g"), now).deliver);
        assert!(mirror.streams[&m].snapshot(m).is_none());
        mirror.apply(
            &ServerFrame::StreamComplete {
                conversation_id: c,
                message_id: m,
                status: crate::domain::types::MessageStatus::Complete,
                content: "abcde".into(),
                usage: None,
                error: None,
                seq: 9,
                tool_calls: vec![],
                citations: vec![],
            },
            now,
        );
        assert!(mirror.streams.is_empty());
    }
}
