//! A small WebSocket client for the tests: JSON frames in and out, with timeouts so a broken
//! server fails a test instead of hanging it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Everything one stream sent to one socket.
#[derive(Debug, Default)]
pub struct StreamFrames {
    pub start: Option<Value>,
    pub chunks: Vec<Value>,
    pub snapshot: Option<Value>,
    /// `stream_queued` frames: the places it waited at.
    pub queued: Vec<Value>,
    /// `tool_call` and `tool_result` frames, in order.
    pub tools: Vec<Value>,
    pub complete: Value,
}

impl StreamFrames {
    /// The text the frames spell: snapshot content, then the chunks after it.
    pub fn text(&self) -> String {
        let mut text = self
            .snapshot
            .as_ref()
            .map(|s| s["content"].as_str().unwrap().to_string())
            .unwrap_or_default();
        for c in &self.chunks {
            text.push_str(c["delta"].as_str().unwrap());
        }
        text
    }

    /// Asserts the chunk indexes continue the snapshot (or start at 0) without gaps.
    pub fn assert_contiguous(&self) {
        let first = self
            .snapshot
            .as_ref()
            .map(|s| s["nextIndex"].as_u64().unwrap())
            .unwrap_or(0);
        for (i, c) in self.chunks.iter().enumerate() {
            assert_eq!(
                c["index"].as_u64().unwrap(),
                first + i as u64,
                "chunk indexes have a gap or repeat: {:?}",
                self.chunks
            );
        }
    }
}

impl WsClient {
    /// Connects to `/api/ws` with `?token=` when given, without sending anything.
    pub async fn connect(address: &str, token: Option<&str>) -> Self {
        Self::connect_with(address, token, None)
            .await
            .expect("websocket connect")
    }

    /// Connects with an `Origin` header; the error is the refused upgrade.
    pub async fn connect_with(
        address: &str,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/api/ws{}",
            address.replacen("http", "ws", 1),
            token.map(|t| format!("?token={t}")).unwrap_or_default()
        );
        let mut request = url.into_client_request()?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { socket })
    }

    /// Connects with `?token=` and waits for `ready`.
    pub async fn authed(address: &str, token: &str) -> Self {
        let mut ws = Self::connect(address, Some(token)).await;
        ws.expect_type("ready").await;
        ws
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("send a frame");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_string()))
            .await
            .expect("send a frame");
    }

    /// The next JSON text frame; `None` when the server closed the socket.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("no frame within the timeout");
            match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The close frame's code and reason, skipping any frames before it.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("no close within the timeout");
            match message {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (f.code.into(), f.reason.to_string()))
                }
                Some(Err(e)) => {
                    eprintln!("the websocket failed instead of closing: {e}");
                    return None;
                }
                None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let frame = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("socket closed while waiting for `{kind}`"));
        assert_eq!(
            frame["type"], kind,
            "expected a `{kind}` frame, got {frame}"
        );
        frame
    }

    /// Frames until (and including) the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("socket closed before `{kind}`: {frames:?}"));
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Sends `stream_chat` and collects that stream's frames through `stream_complete`.
    pub async fn chat(&mut self, conversation_id: Option<&str>, message: &str) -> StreamFrames {
        let mut frame = json!({ "type": "stream_chat", "message": message });
        if let Some(id) = conversation_id {
            frame["conversationId"] = json!(id);
        }
        self.send(frame).await;
        self.collect_stream(None).await
    }

    /// Collects frames of one stream (the first one seen, or `message_id`) until its
    /// `stream_complete`, checking that every frame belongs to it.
    pub async fn collect_stream(&mut self, message_id: Option<&str>) -> StreamFrames {
        let mut frames = StreamFrames::default();
        let mut id = message_id.map(str::to_string);
        loop {
            let frame = self.recv().await.expect("socket closed mid-stream");
            let kind = frame["type"].as_str().unwrap_or_default().to_string();
            if kind == "error" {
                panic!("error frame while streaming: {frame}");
            }
            let tool = kind == "tool_call" || kind == "tool_result";
            if !kind.starts_with("stream_") && !tool {
                continue;
            }
            let frame_id = frame["messageId"].as_str().unwrap().to_string();
            match &id {
                Some(id) if *id != frame_id => continue,
                None => id = Some(frame_id),
                _ => {}
            }
            match kind.as_str() {
                "stream_start" => frames.start = Some(frame),
                "stream_chunk" => frames.chunks.push(frame),
                "stream_snapshot" => frames.snapshot = Some(frame),
                "stream_queued" => frames.queued.push(frame),
                "tool_call" | "tool_result" => frames.tools.push(frame),
                "stream_complete" => {
                    frames.complete = frame;
                    return frames;
                }
                other => panic!("unexpected frame type {other}"),
            }
        }
    }
}
