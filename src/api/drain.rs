//! Reads what a handler left unread of a request body before the answer goes out.
//!
//! A handler that refuses a request early (401 before the body is parsed, say) leaves the
//! body on the wire. hyper then closes the connection with unread data, the kernel answers
//! the still-uploading client with a reset, and the client may lose the answer with it (the
//! "lingering close" problem). Reading the rest, up to `MAX_BODY_BYTES` and for a bounded
//! time, lets every client under the size limit read its answer; a body over the limit is
//! not read further (its 413 is the answer, and the connection closes).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use poem::http::header;
use poem::{Body, Request};

/// How long the layer waits for the unread rest of a body before closing anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What may be left of a request body once the handler has answered.
pub enum UnreadBody {
    /// There was no body.
    None,
    /// A body the handler may not have read to its end.
    Tapped(BodyTap),
    /// A body whose declared length is over the limit: refused unread.
    TooLarge,
}

impl UnreadBody {
    /// Reads what the handler left, within the limit. Returns whether the connection can
    /// serve another request: not when a body is left unread on it (the answer must then
    /// say `Connection: close`, or a client would send its next request into a closing
    /// connection).
    pub async fn finish(self, max: usize) -> bool {
        match self {
            UnreadBody::None => true,
            UnreadBody::Tapped(tap) => tap.drain(max).await,
            UnreadBody::TooLarge => false,
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

struct TapState {
    stream: ByteStream,
    /// Bytes handed out so far, to the handler or to the drain.
    read: usize,
    finished: bool,
}

/// The request body, shared between the handler (which reads it as usual) and the layer
/// (which reads whatever the handler left).
#[derive(Clone)]
pub struct BodyTap(Arc<Mutex<TapState>>);

impl BodyTap {
    /// Replaces the request's body with a tapped one, when there is a body whose declared
    /// length is within `max` bytes (or which is chunked).
    pub fn install(req: &mut Request, max: usize) -> UnreadBody {
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        match declared {
            Some(len) if len > max => return UnreadBody::TooLarge,
            Some(0) => return UnreadBody::None,
            None if !chunked => return UnreadBody::None,
            _ => {}
        }
        let tap = BodyTap(Arc::new(Mutex::new(TapState {
            stream: Box::pin(req.take_body().into_bytes_stream()),
            read: 0,
            finished: false,
        })));
        req.set_body(Body::from_bytes_stream(tap.clone()));
        UnreadBody::Tapped(tap)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and discards the rest of the body while at most `max` bytes have been read in
    /// all, for at most [`DRAIN_TIMEOUT`]. Returns whether the body was read to its end.
    pub async fn drain(mut self, max: usize) -> bool {
        let rest = async {
            loop {
                {
                    let state = self.lock();
                    if state.finished {
                        return true;
                    }
                    if state.read > max {
                        return false;
                    }
                }
                match self.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
        };
        tokio::time::timeout(DRAIN_TIMEOUT, rest)
            .await
            .unwrap_or(false)
    }
}

impl Stream for BodyTap {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.lock();
        if state.finished {
            return Poll::Ready(None);
        }
        let polled = state.stream.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(bytes))) => state.read += bytes.len(),
            Poll::Ready(Some(Err(_)) | None) => state.finished = true,
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked_request(parts: Vec<&'static str>) -> Request {
        let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, io::Error>));
        Request::builder()
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(Body::from_bytes_stream(stream))
    }

    #[tokio::test]
    async fn an_unread_body_within_the_limit_is_read_to_its_end() {
        let mut req = chunked_request(vec!["aaaa", "bbbb", "cccc"]);
        let UnreadBody::Tapped(tap) = BodyTap::install(&mut req, 100) else {
            panic!("a chunked body is tapped")
        };
        // The handler reads one piece and gives up.
        let mut seen = req.take_body().into_bytes_stream();
        assert_eq!(seen.next().await.unwrap().unwrap(), "aaaa");
        assert!(tap.clone().drain(100).await);
        assert_eq!(tap.lock().read, 12);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_drained() {
        let mut req = chunked_request(vec!["aaaa", "bbbb", "cccc"]);
        let UnreadBody::Tapped(tap) = BodyTap::install(&mut req, 6) else {
            panic!("a chunked body is tapped")
        };
        let mut seen = req.take_body().into_bytes_stream();
        seen.next().await.unwrap().unwrap();
        seen.next().await.unwrap().unwrap();
        assert!(
            !tap.clone().drain(6).await,
            "8 bytes read of a 6-byte limit"
        );
        assert_eq!(
            tap.lock().read,
            8,
            "nothing read after the limit was passed"
        );
    }

    #[tokio::test]
    async fn no_body_or_an_oversized_declared_body_is_left_alone() {
        let mut get = Request::builder().finish();
        let none = BodyTap::install(&mut get, 100);
        assert!(matches!(none, UnreadBody::None));
        assert!(
            none.finish(100).await,
            "nothing unread: the connection stays open"
        );
        let mut big = Request::builder()
            .header(header::CONTENT_LENGTH, "101")
            .body("x".repeat(101));
        let big = BodyTap::install(&mut big, 100);
        assert!(matches!(big, UnreadBody::TooLarge));
        assert!(!big.finish(100).await, "left unread: the connection closes");
        let mut fits = Request::builder()
            .header(header::CONTENT_LENGTH, "100")
            .body("x".repeat(100));
        let fits = BodyTap::install(&mut fits, 100);
        assert!(matches!(fits, UnreadBody::Tapped(_)));
        assert!(fits.finish(100).await, "read to its end by the drain");
    }
}
