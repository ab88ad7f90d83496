//! Server-sent events: a response body fed by a channel, one event per frame, with keep-alive
//! comments when idle.
//!
//! Each event is written as one frame (hyper flushes each frame of a streaming body at once), so a
//! client never sees half an event. Events carry monotonic `id:`s. When the client goes away hyper
//! drops the body, which drops the receiver; the producer sees its channel closed and cancels.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// An idle stream gets a `: keep-alive` comment this often: proxies and clients with read
/// timeouts see life, and a dead peer is found by the failed write.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// One event ready for the wire.
pub struct SseEvent {
    /// The `event:` name; empty for a data-only frame (no `id:` either), as OpenAI streams are.
    pub event: &'static str,
    /// One line of JSON (serde_json never writes raw newlines).
    pub data: String,
}

impl SseEvent {
    pub fn json(event: &'static str, data: &impl serde::Serialize) -> SseEvent {
        SseEvent {
            event,
            data: serde_json::to_string(data).unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// The streaming body. Events are converted to SSE as hyper polls for them, so a producer's
/// event reaches the socket with no task in between.
pub struct SseBody<T = SseEvent> {
    rx: mpsc::Receiver<T>,
    keepalive: Pin<Box<Sleep>>,
    next_id: u64,
}

impl<T: Into<SseEvent>> SseBody<T> {
    pub fn new(rx: mpsc::Receiver<T>) -> SseBody<T> {
        SseBody {
            rx,
            keepalive: Box::pin(tokio::time::sleep(KEEPALIVE_INTERVAL)),
            next_id: 1,
        }
    }
}

impl<T: Into<SseEvent>> Body for SseBody<T> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let event: SseEvent = event.into();
                this.keepalive
                    .as_mut()
                    .reset(Instant::now() + KEEPALIVE_INTERVAL);
                let text = if event.event.is_empty() {
                    // OpenAI-style streams: data lines only.
                    format!("data: {}\n\n", event.data)
                } else {
                    let id = this.next_id;
                    this.next_id += 1;
                    format!("id: {id}\nevent: {}\ndata: {}\n\n", event.event, event.data)
                };
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.keepalive.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.keepalive
                        .as_mut()
                        .reset(Instant::now() + KEEPALIVE_INTERVAL);
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b": keep-alive\n\n",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn events_are_framed_and_idle_streams_get_keepalives() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = SseBody::new(rx);
        tx.send(SseEvent::json(
            "token",
            &serde_json::json!({"text": "a\nb"}),
        ))
        .await
        .unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &frame[..],
            b"id: 1\nevent: token\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
        // Nothing sent for 15 s: a comment arrives (time is paused, so this is instant).
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b": keep-alive\n\n");
        drop(tx);
        assert!(body.frame().await.is_none());
    }
}
