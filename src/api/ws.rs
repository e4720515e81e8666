//! `GET /api/ws`: the WebSocket endpoint. The upgrade checks `Origin`; the session
//! authenticates (by `?token=` or a first `auth` frame), then serves the frames of
//! `realtime::frames` until its access token expires (a later `auth` frame extends it) or
//! the server ends the session (close 4401). Each socket has a bounded send queue drained
//! by its own writer task, which also reads the joined rooms' live frames straight from
//! their subscriptions; a socket that cannot keep up with either is closed with a reason
//! instead of slowing anyone else.

use crate::domain::codes::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use poem::http::header;
use poem::web::websocket::{CloseCode, Message, WebSocket, WebSocketConfig, WebSocketStream};
use poem::web::{Data, Query};
use poem::{handler, IntoResponse, Request, Response};
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::ApiError;
use super::middleware::origin_allowed;
use super::state::AppState;
use crate::realtime::bus::RoomReceiver;
use crate::realtime::frames::{ClientFrame, FrameKey, OutFrame, ServerFrame};
use crate::service::auth::{Authenticated, CurrentUser};
use crate::service::chat::TurnRequest;
use crate::service::sessions::{LiveSession, SignIn};
use crate::service::ServiceError;

/// The read buffer a socket starts with; a larger frame grows it while it is read.
const WS_READ_BUFFER_BYTES: usize = 1024;
/// How long a socket without `?token=` has to send its `auth` frame.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Events read at a time for a `resume`: a replay of any length holds one page in memory.
const REPLAY_PAGE: u64 = 500;
/// How long a replay waits for room in a socket's queue before treating it as too slow.
const REPLAY_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
pub struct WsParams {
    token: Option<String>,
}

#[handler]
pub async fn ws_upgrade(
    req: &Request,
    ws: WebSocket,
    Query(params): Query<WsParams>,
    Data(state): Data<&AppState>,
) -> Response {
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        if !origin_allowed(origin, req.headers(), &state.config.cors_origins) {
            return ApiError::forbidden("this Origin is not allowed to open a WebSocket")
                .into_response();
        }
    }
    let state = state.clone();
    let max = state.config.ws_max_frame_bytes;
    ws.config(
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            // tungstenite allocates its read buffer up front (128 KiB by default) and lets
            // writes gather up to 128 KiB: per idle socket that was most of its memory.
            // Client frames are small, and every frame is flushed whole as it is sent.
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .write_buffer_size(0),
    )
    .on_upgrade(move |socket| run_session(socket, state, params.token))
    .into_response()
}

/// The frames a client may send: `rate` per second, in bursts of up to twice that (a token
/// bucket). Protects the server's per-frame work (parsing, a database read per join) from
/// one socket; a client that keeps sending past it is closed rather than answered forever.
struct FrameBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
    refused_in_a_row: u32,
}

impl FrameBudget {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            burst: 2.0 * rate,
            tokens: 2.0 * rate,
            last: tokio::time::Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Takes one frame's allowance, if there is one.
    fn allow(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }

    /// More frames refused in a row than a whole burst: not a client that slows down.
    fn flooding(&self) -> bool {
        f64::from(self.refused_in_a_row) > self.burst
    }
}

/// Why the server closes a socket.
#[derive(Clone, Debug)]
struct CloseReason(CloseCode, &'static str);

/// Close code for a session that ended: its access token expired without a fresh `auth`
/// frame, or the user signed out, changed or lost their password, or was disabled.
const SESSION_ENDED: CloseCode = CloseCode::Reserved(4401);

const SLOW_CONSUMER: CloseReason = CloseReason(
    CloseCode::Again,
    "send queue overflow: the client is not reading fast enough",
);

/// What a socket's writer is asked to do, in order.
enum Outgoing {
    Frame(Arc<OutFrame>),
    /// From here on, also relay the room's live frames: straight from the room's
    /// subscription to the socket, with no task in between (a wake-up less per chunk).
    /// Queued after the join's replay and snapshot, so the live frames follow them.
    Join(Uuid, RoomReceiver),
    Leave(Uuid),
}

/// The send side of a socket: a bounded queue and the means to close.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    /// Asks the session to end; the writer still sends what was queued before it.
    close: CancellationToken,
    /// Set only for a client too slow to read: the writer drops even the frame in flight.
    abort: CancellationToken,
    reason: Arc<Mutex<Option<CloseReason>>>,
}

impl Outbox {
    fn send(&self, frame: Arc<OutFrame>) {
        self.push(Outgoing::Frame(frame));
    }

    fn push(&self, outgoing: Outgoing) {
        if self.queue.try_send(outgoing).is_err() && !self.close.is_cancelled() {
            self.close_with(SLOW_CONSUMER);
        }
    }

    /// Queues a frame, waiting for room: a replay may be longer than the queue. A socket
    /// that makes no room within [`REPLAY_WAIT`] is closed as too slow. Whether it was
    /// queued.
    async fn send_waiting(&self, frame: Arc<OutFrame>) -> bool {
        self.push_waiting(Outgoing::Frame(frame)).await
    }

    async fn push_waiting(&self, outgoing: Outgoing) -> bool {
        tokio::select! {
            sent = tokio::time::timeout(REPLAY_WAIT, self.queue.send(outgoing)) => match sent {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    self.close_with(SLOW_CONSUMER);
                    false
                }
            },
            _ = self.close.cancelled() => false,
        }
    }

    fn reply(&self, frame: &ServerFrame) {
        self.send(Arc::new(OutFrame::new(frame)));
    }

    fn error(&self, err: ServiceError) {
        let api = ApiError::from(err);
        self.reply(&ServerFrame::error(api.code, api.message));
    }

    fn close_with(&self, reason: CloseReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let reason = slot.get_or_insert(reason);
        if matches!(reason, CloseReason(CloseCode::Again, _)) {
            self.abort.cancel();
        }
        self.close.cancel();
    }
}

async fn run_session(socket: WebSocketStream, state: AppState, token: Option<String>) {
    let (sink, mut incoming) = socket.split();
    let (queue, queued) = mpsc::channel(state.config.ws_send_queue_frames);
    let outbox = Outbox {
        queue,
        close: CancellationToken::new(),
        abort: CancellationToken::new(),
        reason: Arc::new(Mutex::new(None)),
    };
    let ping = Arc::new(Notify::new());
    let writer = tokio::spawn(write_frames(
        sink,
        queued,
        outbox.clone(),
        ping.clone(),
        state.metrics.clone(),
    ));

    // Boxed, like frame handling below: only sockets being authenticated carry its space.
    let auth = match Box::pin(authenticate(&state, &mut incoming, token)).await {
        Some(auth) => auth,
        None => {
            outbox.reply(&ServerFrame::error(
                ErrorCode::Unauthorized,
                "a valid access token is required",
            ));
            outbox.close_with(CloseReason(CloseCode::Policy, "unauthorized"));
            let _ = writer.await;
            return;
        }
    };
    let user = auth.user;
    let Some(live) = state.sessions.open(user.id, sign_in(&auth)) else {
        state
            .metrics
            .rate_limited
            .with_label_values(&["ws_connections"])
            .inc();
        outbox.reply(&ServerFrame::error(
            ErrorCode::RateLimitExceeded,
            "too many open WebSockets for this user",
        ));
        outbox.close_with(CloseReason(CloseCode::Policy, "too many connections"));
        let _ = writer.await;
        return;
    };
    outbox.reply(&ready(&auth));
    // The user's own room: what is about them rather than a conversation (their documents'
    // progress) reaches every socket of theirs, on any instance.
    outbox.push(Outgoing::Join(user.id, state.hub.bus().subscribe(user.id)));
    let limits = state.config.limits.clone();
    let shutdown = state.shutdown.clone();
    let mut session = Session {
        state,
        user,
        outbox: outbox.clone(),
        rooms: HashSet::new(),
        live,
        token_expires: deadline(auth.expires_at),
    };
    tracing::debug!(user_id = %user.id, "websocket session started");

    let mut budget = FrameBudget::new(limits.ws_frames_per_second);
    // An idle socket is pinged; one that then stays silent is closed.
    let mut last_heard = tokio::time::Instant::now();
    let mut pinged = false;
    loop {
        let wake = if pinged {
            last_heard + limits.ws_ping_interval + limits.ws_pong_timeout
        } else {
            last_heard + limits.ws_ping_interval
        };
        let message = tokio::select! {
            _ = outbox.close.cancelled() => break,
            why = session.live.ended() => {
                session.end(why.reason());
                break;
            }
            _ = tokio::time::sleep_until(session.token_expires) => {
                session.end("access token expired: send a fresh auth frame before it does");
                break;
            }
            _ = shutdown.cancelled() => {
                outbox.close_with(CloseReason(CloseCode::Away, "server shutting down"));
                break;
            }
            _ = tokio::time::sleep_until(wake) => {
                if pinged {
                    outbox.close_with(CloseReason(CloseCode::Away, "ping timeout: no answer from the client"));
                    break;
                }
                pinged = true;
                ping.notify_one();
                continue;
            }
            message = incoming.next() => message,
        };
        last_heard = tokio::time::Instant::now();
        pinged = false;
        if matches!(
            message,
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_)))
        ) && !budget.allow()
        {
            session
                .state
                .metrics
                .rate_limited
                .with_label_values(&["ws_frames"])
                .inc();
            if budget.flooding() {
                outbox.close_with(CloseReason(
                    CloseCode::Policy,
                    "too many frames: the client kept sending past its limit",
                ));
                break;
            }
            outbox.reply(&ServerFrame::error(
                ErrorCode::RateLimitExceeded,
                "too many frames; this one was dropped: slow down",
            ));
            continue;
        }
        match message {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(err)) => {
                // Oversized frames surface here; the connection cannot continue after them.
                tracing::debug!(error = %err, "websocket read failed");
                outbox.reply(&ServerFrame::error(
                    ErrorCode::PayloadTooLarge,
                    "frame too large or malformed; closing",
                ));
                outbox.close_with(CloseReason(CloseCode::Size, "frame too large or malformed"));
                break;
            }
            // Boxed: the handling future (database queries, a stream start) is large, and an
            // idle socket should not carry its space in its own task.
            Some(Ok(Message::Text(text))) => Box::pin(session.handle(&text)).await,
            Some(Ok(Message::Binary(_))) => outbox.reply(&ServerFrame::error(
                ErrorCode::ValidationError,
                "frames must be JSON text",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    }
    // The socket goes; its streams do not (the hub owns them).
    drop(session);
    outbox.close.cancel();
    // Read (and drop) what the client still sends until it answers the close: the
    // connection then ends with the closing handshake, not with a reset that can swallow
    // the close frame (and its reason) on the client's side. Bounded in time.
    let drain = async {
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(1), incoming.next()).await
        {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let drain = tokio::time::timeout(Duration::from_secs(3), drain);
    let _ = tokio::join!(writer, drain);
}

async fn authenticate(
    state: &AppState,
    incoming: &mut futures::stream::SplitStream<WebSocketStream>,
    token: Option<String>,
) -> Option<Authenticated> {
    let token = match token {
        Some(token) => token,
        None => {
            let first = tokio::time::timeout(AUTH_TIMEOUT, incoming.next())
                .await
                .ok()??
                .ok()?;
            match first {
                Message::Text(text) => match ClientFrame::parse(&text) {
                    Ok(ClientFrame::Auth { token }) => token,
                    _ => return None,
                },
                _ => return None,
            }
        }
    };
    state.auth.authenticate_socket(&token).await.ok()
}

fn ready(auth: &Authenticated) -> ServerFrame {
    ServerFrame::Ready {
        user_id: auth.user.id,
        expires_at: chrono::DateTime::from_timestamp(auth.expires_at, 0).unwrap_or_default(),
    }
}

/// The sign-in and session generation a socket authenticated with.
fn sign_in(auth: &Authenticated) -> SignIn {
    SignIn {
        sid: auth.sid,
        generation: auth.generation,
    }
}

/// When a token that expires at `expires_at` (Unix seconds) stops being good for a socket.
fn deadline(expires_at: i64) -> tokio::time::Instant {
    let left_ms = expires_at
        .saturating_mul(1000)
        .saturating_sub(chrono::Utc::now().timestamp_millis());
    tokio::time::Instant::now() + Duration::from_millis(left_ms.max(0) as u64)
}

struct Session {
    state: AppState,
    user: CurrentUser,
    outbox: Outbox,
    /// The rooms this socket has joined (the writer relays their frames).
    rooms: HashSet<Uuid>,
    /// The socket's registration: resolves when the server ends the session.
    live: LiveSession,
    /// When the access token the socket last authenticated with expires.
    token_expires: tokio::time::Instant,
}

impl Session {
    /// Ends the session: an `UNAUTHORIZED` error saying why, then close code 4401.
    fn end(&self, why: &'static str) {
        self.outbox
            .reply(&ServerFrame::error(ErrorCode::Unauthorized, why));
        self.outbox.close_with(CloseReason(SESSION_ENDED, why));
    }

    /// A fresh `auth` frame on an open socket: the same user's newer access token moves the
    /// expiry (and the sign-in the socket belongs to) without a reconnect; rooms stay joined.
    async fn reauthenticate(&mut self, token: &str) {
        match self.state.auth.authenticate_socket(token).await {
            Ok(auth) if auth.user.id == self.user.id => {
                self.user = auth.user;
                self.token_expires = deadline(auth.expires_at);
                self.live.set_sign_in(sign_in(&auth));
                self.outbox.reply(&ready(&auth));
            }
            // A bad token does not end a session that is still good: the socket keeps the
            // token it has until that one expires.
            Ok(_) => self.outbox.reply(&ServerFrame::error(
                ErrorCode::ValidationError,
                "token: belongs to another user; the socket keeps its current token",
            )),
            Err(_) => self.outbox.reply(&ServerFrame::error(
                ErrorCode::ValidationError,
                "token: invalid or expired; the socket keeps its current token",
            )),
        }
    }

    async fn handle(&mut self, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(message) => {
                return self
                    .outbox
                    .reply(&ServerFrame::error(ErrorCode::ValidationError, message))
            }
        };
        // A disabled account or an ended session stops here, even on a socket opened before
        // (should the command that closes its sockets have been lost).
        if !matches!(frame, ClientFrame::Ping | ClientFrame::Auth { .. }) {
            match self
                .state
                .auth
                .recheck(self.user.id, self.live.sign_in())
                .await
            {
                Ok(user) => self.user = user,
                Err(err) => {
                    self.outbox.error(err);
                    self.outbox
                        .close_with(CloseReason(SESSION_ENDED, "unauthorized"));
                    return;
                }
            }
        }
        match frame {
            ClientFrame::Ping => self.outbox.reply(&ServerFrame::Pong),
            ClientFrame::Auth { token } => self.reauthenticate(&token).await,
            ClientFrame::JoinConversation { conversation_id } => {
                self.join(conversation_id, None).await
            }
            ClientFrame::Resume {
                conversation_id,
                after_seq,
            } => self.join(conversation_id, Some(after_seq.max(0))).await,
            ClientFrame::LeaveConversation { conversation_id } => {
                if self.rooms.remove(&conversation_id) {
                    self.outbox.push(Outgoing::Leave(conversation_id));
                }
                self.outbox.reply(&ServerFrame::Left { conversation_id });
            }
            ClientFrame::CancelStream { message_id } => {
                if let Err(err) = self.state.hub.cancel(self.user, message_id).await {
                    self.outbox.error(err);
                }
            }
            ClientFrame::RateMessage {
                conversation_id,
                message_id,
                rating,
                comment,
            } => {
                let rated = self
                    .state
                    .validation
                    .rate(self.user, conversation_id, message_id, rating, comment)
                    .await;
                match rated {
                    // A socket in the room hears it with the room; any other gets it here.
                    Ok((_, Some(event))) if !self.rooms.contains(&conversation_id) => {
                        let event = super::models::event_json(&event);
                        self.outbox.reply(&ServerFrame::Event { event });
                    }
                    Ok(_) => {}
                    Err(err) => self.outbox.error(err),
                }
            }
            ClientFrame::StreamChat {
                message,
                conversation_id,
                client_message_id,
                model,
            } => {
                self.stream_chat(message, conversation_id, client_message_id, model)
                    .await
            }
        }
    }

    /// `join_conversation` (no replay) and `resume` (replay events after `after_seq`).
    /// Subscribing comes first and the snapshot after it, so nothing falls in between; the
    /// writer drops what the subscription then delivers twice.
    async fn join(&mut self, conversation_id: Uuid, replay_after: Option<i64>) {
        let conversation = match self
            .state
            .store
            .find_conversation(conversation_id, self.user.id)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return self.outbox.error(ServiceError::ConversationNotFound),
            Err(err) => return self.outbox.error(err.into()),
        };
        let receiver = (!self.rooms.contains(&conversation_id))
            .then(|| self.state.hub.bus().subscribe(conversation_id));
        self.outbox.reply(&ServerFrame::Joined {
            conversation_id,
            last_seq: conversation.last_seq,
        });
        if let Some(mut after) = replay_after {
            // Page by page, each frame waiting for room in the queue: a replay of any length
            // reaches a client that reads, in bounded memory.
            loop {
                let page = match self
                    .state
                    .store
                    .list_events(conversation_id, after, None, REPLAY_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(err) => return self.outbox.error(err.into()),
                };
                let full = page.len() as u64 == REPLAY_PAGE;
                for event in page {
                    after = event.seq;
                    let finished = match &event.event {
                        crate::domain::events::ConversationEvent::StreamCompleted(c) => {
                            Some(c.message_id)
                        }
                        _ => None,
                    };
                    let json = super::models::event_json(&event);
                    let frame = OutFrame::event(conversation_id, event.seq, finished, json);
                    if !self.outbox.send_waiting(Arc::new(frame)).await {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
        }
        for snapshot in self.state.hub.snapshots(conversation_id) {
            if !self.outbox.send_waiting(Arc::new(snapshot)).await {
                return;
            }
        }
        if let Some(receiver) = receiver {
            if self
                .outbox
                .push_waiting(Outgoing::Join(conversation_id, receiver))
                .await
            {
                self.rooms.insert(conversation_id);
            }
        }
    }

    async fn stream_chat(
        &mut self,
        message: String,
        conversation_id: Option<Uuid>,
        client_message_id: Option<String>,
        model: Option<String>,
    ) {
        let request = TurnRequest {
            conversation_id,
            create_if_missing: true,
            message,
            client_message_id,
            model,
        };
        let rooms = &self.rooms;
        let bus = self.state.hub.bus().clone();
        let started = self
            .state
            .hub
            .start(self.user, request, |id| {
                (!rooms.contains(&id)).then(|| bus.subscribe(id))
            })
            .await;
        match started {
            Ok(started) => {
                for frame in started.direct {
                    self.outbox.send(Arc::new(frame));
                }
                if let Some(receiver) = started.receiver {
                    self.rooms.insert(started.conversation_id);
                    self.outbox
                        .push(Outgoing::Join(started.conversation_id, receiver));
                }
            }
            Err(err) => self.outbox.error(err),
        }
    }
}

/// Drains the queue and the joined rooms into the socket, dropping frames this socket has
/// already had in another form (see [`Dedup`]), until the session ends or asks to close.
async fn write_frames(
    mut sink: futures::stream::SplitSink<WebSocketStream, Message>,
    mut queued: mpsc::Receiver<Outgoing>,
    outbox: Outbox,
    ping: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut dedup = Dedup::default();
    let mut rooms: StreamMap<Uuid, BroadcastStream<Arc<OutFrame>>> = StreamMap::new();
    loop {
        let frame = tokio::select! {
            biased;
            outgoing = queued.recv() => match outgoing {
                Some(Outgoing::Frame(frame)) => frame,
                Some(Outgoing::Join(id, receiver)) => {
                    rooms.insert(id, BroadcastStream::new(receiver));
                    continue;
                }
                Some(Outgoing::Leave(id)) => {
                    rooms.remove(&id);
                    continue;
                }
                None => break,
            },
            Some((_, live)) = rooms.next(), if !rooms.is_empty() => match live {
                Ok(frame) => frame,
                // Fallen a whole room's buffer behind: frames are lost, so the socket goes.
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    outbox.close_with(SLOW_CONSUMER);
                    continue;
                }
            },
            _ = ping.notified() => {
                if sink.send(Message::Ping(Vec::new())).await.is_err() {
                    break;
                }
                continue;
            }
            _ = outbox.close.cancelled() => break,
        };
        if !dedup.pass(&frame) {
            continue;
        }
        // A requested close lets the frame in flight finish (an `error` before the close,
        // say), within a grace period; a too-slow client loses it at once.
        let sent = tokio::select! {
            sent = sink.send(Message::Text(frame.json.clone())) => sent.is_ok(),
            _ = outbox.abort.cancelled() => false,
            _ = async {
                outbox.close.cancelled().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => false,
        };
        if !sent {
            break;
        }
        if let Some(arrived) = frame.arrived {
            metrics
                .relay_overhead
                .observe(arrived.elapsed().as_secs_f64());
        }
    }
    let reason = outbox
        .reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let slow = matches!(&reason, Some(CloseReason(CloseCode::Again, _)));
    // Flush what was queued before a requested close (an error frame, say), briefly; a
    // client too slow to read gets no more frames, only the close.
    while let (false, Ok(outgoing)) = (slow, queued.try_recv()) {
        let Outgoing::Frame(frame) = outgoing else {
            continue;
        };
        let sent = !dedup.pass(&frame)
            || tokio::time::timeout(
                Duration::from_millis(200),
                sink.send(Message::Text(frame.json.clone())),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        if !sent {
            break;
        }
    }
    let close = match reason {
        Some(CloseReason(code, text)) => Message::close_with(code, text),
        None => Message::close(),
    };
    // A slow client's buffers are full: give it time to drain them and read the reason.
    // This waits in the socket's own task; no stream and no other socket waits with it.
    let _ = tokio::time::timeout(Duration::from_secs(10), sink.send(close)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

/// Keeps one socket's view free of repeats when a snapshot or a replay overlaps live frames:
/// chunks below the next expected index, starts already replayed, and anything about a
/// stream this socket has already seen finish.
#[derive(Default)]
struct Dedup {
    replayed_seq: HashMap<Uuid, i64>,
    next_index: HashMap<Uuid, u64>,
    /// The `seq` of the last tool event each running stream's frames covered.
    tool_seq: HashMap<Uuid, i64>,
    /// Streams whose `stream_start` this socket has had and that have not finished: a
    /// repeated send answered on one instance while the start crosses from another would
    /// otherwise show the start twice.
    started: HashSet<Uuid>,
    finished: HashSet<Uuid>,
}

impl Dedup {
    /// Whether to send `frame`. Direct replies always go, but still update what the socket
    /// has seen.
    fn pass(&mut self, frame: &OutFrame) -> bool {
        self.fresh(frame) || frame.direct
    }

    /// Text of a running stream that starts at chunk `from` and leaves the socket expecting
    /// chunk `to` next: sent unless the stream has finished or `from` is already covered.
    fn advance(&mut self, message_id: Uuid, from: u64, to: u64) -> bool {
        if self.finished.contains(&message_id) {
            return false;
        }
        let expected = self.next_index.entry(message_id).or_default();
        if from < *expected {
            return false;
        }
        *expected = to;
        true
    }

    fn fresh(&mut self, frame: &OutFrame) -> bool {
        let conversation = frame.conversation_id.unwrap_or_default();
        match frame.key {
            FrameKey::Other => true,
            FrameKey::Event { seq, finished } => {
                let replayed = self.replayed_seq.entry(conversation).or_default();
                *replayed = (*replayed).max(seq);
                if let Some(message_id) = finished {
                    self.finished.insert(message_id);
                    self.next_index.remove(&message_id);
                }
                true
            }
            FrameKey::Start { message_id, seq } => {
                seq > self.replayed_seq.get(&conversation).copied().unwrap_or(0)
                    && !self.finished.contains(&message_id)
                    && self.started.insert(message_id)
            }
            FrameKey::Snapshot {
                message_id,
                next_index,
                tool_seq,
            } => {
                let fresh = self.advance(message_id, next_index, next_index);
                if fresh {
                    let seen = self.tool_seq.entry(message_id).or_default();
                    *seen = (*seen).max(tool_seq);
                }
                fresh
            }
            FrameKey::Tool { message_id, seq } => {
                let replayed = self.replayed_seq.get(&conversation).copied().unwrap_or(0);
                let seen = self.tool_seq.entry(message_id).or_default();
                let fresh = seq > replayed && seq > *seen && !self.finished.contains(&message_id);
                *seen = (*seen).max(seq);
                fresh
            }
            FrameKey::Chunk { message_id, index } => self.advance(message_id, index, index + 1),
            FrameKey::Complete { message_id, .. } => {
                self.next_index.remove(&message_id);
                self.tool_seq.remove(&message_id);
                self.started.remove(&message_id);
                self.finished.insert(message_id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(message_id: Uuid, index: u64) -> OutFrame {
        OutFrame::new(&ServerFrame::StreamChunk {
            conversation_id: Uuid::nil(),
            message_id,
            index,
            delta: "x".into(),
        })
    }

    #[test]
    fn a_stream_start_reaches_a_socket_once() {
        let m = Uuid::now_v7();
        let start = || {
            OutFrame::new(&ServerFrame::StreamStart {
                conversation_id: Uuid::nil(),
                message_id: m,
                user_message_id: m,
                seq: 3,
            })
        };
        let mut dedup = Dedup::default();
        // A repeated send's direct answer, then the same start arriving live.
        assert!(dedup.pass(&start().into_direct()));
        assert!(
            !dedup.pass(&start()),
            "the live repeat of a start is dropped"
        );
        assert!(dedup.pass(&chunk(m, 0)));
    }

    #[test]
    fn chunks_covered_by_a_snapshot_are_dropped_once() {
        let m = Uuid::now_v7();
        let mut dedup = Dedup::default();
        let snapshot = OutFrame::new(&ServerFrame::StreamSnapshot {
            conversation_id: Uuid::nil(),
            message_id: m,
            content: "xx".into(),
            next_index: 2,
            tool_calls: vec![],
            tool_seq: 0,
        });
        assert!(dedup.pass(&snapshot));
        assert!(!dedup.pass(&chunk(m, 0)));
        assert!(!dedup.pass(&chunk(m, 1)));
        assert!(dedup.pass(&chunk(m, 2)));
        assert!(!dedup.pass(&chunk(m, 2)));
    }

    #[test]
    fn direct_replies_go_out_even_when_already_seen() {
        let m = Uuid::now_v7();
        let complete = || {
            OutFrame::new(&ServerFrame::StreamComplete {
                conversation_id: Uuid::nil(),
                message_id: m,
                status: crate::domain::types::MessageStatus::Complete,
                content: String::new(),
                usage: None,
                error: None,
                seq: 7,
                tool_calls: vec![],
                citations: vec![],
            })
        };
        let mut dedup = Dedup::default();
        assert!(dedup.pass(&complete()));
        assert!(!dedup.pass(&complete()), "a live repeat is dropped");
        assert!(
            dedup.pass(&complete().into_direct()),
            "a requested repeat is sent"
        );
    }

    #[test]
    fn a_replayed_completion_silences_the_live_one() {
        let m = Uuid::now_v7();
        let mut dedup = Dedup::default();
        assert!(dedup.pass(&OutFrame::event(
            Uuid::nil(),
            7,
            Some(m),
            serde_json::json!({})
        )));
        assert!(!dedup.pass(&chunk(m, 5)));
        let complete = OutFrame::new(&ServerFrame::StreamComplete {
            conversation_id: Uuid::nil(),
            message_id: m,
            status: crate::domain::types::MessageStatus::Complete,
            content: String::new(),
            usage: None,
            error: None,
            seq: 7,
            tool_calls: vec![],
            citations: vec![],
        });
        assert!(!dedup.pass(&complete));
        let start = OutFrame::new(&ServerFrame::StreamStart {
            conversation_id: Uuid::nil(),
            message_id: m,
            user_message_id: m,
            seq: 6,
        });
        assert!(!dedup.pass(&start));
    }
}
