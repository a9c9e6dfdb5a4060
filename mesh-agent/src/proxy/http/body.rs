//! Body plumbing: one boxed body type for everything the proxy sends, a wrapper that observes a
//! streamed body (bytes, gRPC status in trailers, completion) for telemetry, and buffering of
//! request bodies so a request can be retried.
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// What was seen of a body when it ended (or was dropped).
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub bytes: u64,
    /// `grpc-status` from the trailers.
    pub grpc_status: Option<u32>,
    /// The body ended normally (not dropped or failed midway).
    pub complete: bool,
}

type OnDone = Box<dyn FnOnce(Seen) + Send>;

/// Passes a body through, counting bytes; calls `on_done` once, when the body ends, fails or is
/// dropped.
pub struct Observed<B> {
    inner: B,
    seen: Seen,
    on_done: Option<OnDone>,
}

impl<B> Observed<B> {
    pub fn new(inner: B, on_done: impl FnOnce(Seen) + Send + 'static) -> Self {
        Self {
            inner,
            seen: Seen::default(),
            on_done: Some(Box::new(on_done)),
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(std::mem::take(&mut self.seen));
        }
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let me = &mut *self;
        let r = ready!(Pin::new(&mut me.inner).poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    me.seen.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    me.seen.grpc_status = grpc_status(t);
                }
                if me.inner.is_end_stream() {
                    me.seen.complete = true;
                    me.finish();
                }
            }
            Some(Err(_)) => me.finish(),
            None => {
                me.seen.complete = true;
                me.finish();
            }
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A request body kept for replays (retries), or streamed once.
pub enum ReqBody {
    /// Fully read (no body, or a body no larger than the buffer limit), with its trailers.
    Buffered(Bytes, Option<http::HeaderMap>),
    /// Too large or unknown size: sent once, never retried.
    Streaming(Body),
}

impl ReqBody {
    /// Takes the body for one attempt.
    pub fn attempt(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b, Some(t)) => Some(boxed(Replay {
                data: (!b.is_empty()).then(|| b.clone()),
                trailers: Some(t.clone()),
            })),
            ReqBody::Buffered(b, None) => Some(if b.is_empty() {
                empty()
            } else {
                full(b.clone())
            }),
            ReqBody::Streaming(_) => {
                match std::mem::replace(self, ReqBody::Buffered(Bytes::new(), None)) {
                    ReqBody::Streaming(s) => Some(s),
                    ReqBody::Buffered(..) => None,
                }
            }
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(..))
    }
}

/// A buffered body with trailers, replayed: the data, then the trailers.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// Reads `body` into memory up to `limit` bytes: a body that ends within the limit is kept for
/// replays (with its trailers), a longer
/// one is streamed on (what was read first, then the rest) and never retried. Returns the body and
/// the number of bytes buffered.
pub async fn buffer(
    mut body: hyper::body::Incoming,
    limit: u64,
) -> Result<(ReqBody, u64), hyper::Error> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if body.is_end_stream() {
            let len = buf.len() as u64;
            return Ok((ReqBody::Buffered(buf.freeze(), None), len));
        }
        match body.frame().await {
            None => {
                let len = buf.len() as u64;
                return Ok((ReqBody::Buffered(buf.freeze(), None), len));
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() as u64 > limit {
                        return Ok((
                            ReqBody::Streaming(boxed(Prefixed {
                                prefix: Some(buf.freeze()),
                                rest: body,
                            })),
                            0,
                        ));
                    }
                }
                Err(frame) => {
                    // Trailers end the body.
                    let len = buf.len() as u64;
                    return Ok((
                        ReqBody::Buffered(buf.freeze(), frame.into_trailers().ok()),
                        len,
                    ));
                }
            },
        }
    }
}

/// Bytes already read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: hyper::body::Incoming,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn buffered_bodies_replay_with_their_trailers() {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        for (data, trailers) in [
            (Bytes::from_static(b"hello"), Some(t.clone())),
            (Bytes::new(), Some(t.clone())),
            (Bytes::from_static(b"hello"), None),
        ] {
            let mut body = ReqBody::Buffered(data.clone(), trailers.clone());
            for attempt in 0..2 {
                let got = body.attempt().unwrap().collect().await.unwrap();
                assert_eq!(got.trailers(), trailers.as_ref(), "attempt {attempt}");
                assert_eq!(got.to_bytes(), data, "attempt {attempt}");
            }
            assert!(body.replayable());
        }
    }
}
