//! Body plumbing: one boxed body type for everything the proxy sends, a wrapper that observes a
//! streamed body (bytes, gRPC status in trailers, completion) for telemetry, the route timeout
//! on response bodies, and the request-body tee that streams upstream while keeping a copy for
//! retries and mirrors.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
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

/// Ends a body with an error once `deadline` passes (the route timeout covering the response
/// body); sets `timed_out` when it does.
pub struct Deadline<B> {
    inner: B,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<std::sync::atomic::AtomicBool>,
}

impl<B> Deadline<B> {
    pub fn new(
        inner: B,
        deadline: Option<tokio::time::Instant>,
        timed_out: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            inner,
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            timed_out,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response timeout (route timeout)")]
pub struct TimedOut;

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut me.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        if let Some(s) = me.sleep.as_mut()
            && s.as_mut().poll(cx).is_ready()
        {
            me.sleep = None;
            me.timed_out
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(TimedOut))));
        }
        Poll::Pending
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
    /// Streamed upstream as it arrives while a copy is kept for replays (Envoy's retry buffer),
    /// see [`ReqBody::tee`].
    Tee(Arc<Mutex<TeeState>>),
    /// Too large or unknown size: sent once, never retried.
    Streaming(Body),
}

impl ReqBody {
    /// A body that streams to the first attempt as it arrives — a gRPC bidi stream or a slow
    /// upload is never held back — while a copy of up to `limit` bytes is kept. A later attempt
    /// replays the copy, then goes on reading the client; once more than `limit` bytes went by
    /// the copy is dropped and the request can no longer be retried.
    pub fn tee(incoming: Body, limit: u64) -> ReqBody {
        ReqBody::Tee(Arc::new(Mutex::new(TeeState {
            incoming,
            chunks: Vec::new(),
            captured: 0,
            limit,
            overflow: false,
            trailers: None,
            done: false,
            read: 0,
            generation: 0,
            waiters: Vec::new(),
        })))
    }

    /// Request body bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        match self {
            ReqBody::Buffered(b, _) => b.len() as u64,
            ReqBody::Tee(s) => s.lock().unwrap_or_else(|p| p.into_inner()).read,
            ReqBody::Streaming(_) => 0,
        }
    }

    /// Resolves to the whole body once the client finished sending it (a buffered body: at
    /// once), or to None if it exceeded the limit; dropped with the request if it never ends.
    /// None for a body streamed without a copy.
    pub fn when_complete(&self) -> Option<tokio::sync::oneshot::Receiver<Option<Bytes>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = match self {
            ReqBody::Tee(s) => s,
            ReqBody::Buffered(b, _) => {
                let _ = tx.send(Some(b.clone()));
                return Some(rx);
            }
            ReqBody::Streaming(_) => return None,
        };
        let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
        if st.overflow {
            let _ = tx.send(None);
        } else if st.done {
            let _ = tx.send(Some(st.whole()));
        } else {
            st.waiters.push(tx);
        }
        Some(rx)
    }

    /// Takes the body for one attempt.
    pub fn attempt(&mut self) -> Option<Body> {
        match self {
            ReqBody::Tee(s) => {
                let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
                if st.overflow {
                    return None;
                }
                // An earlier attempt's body, if its connection still polls it, is cut off.
                st.generation += 1;
                Some(boxed(TeeAttempt {
                    shared: s.clone(),
                    generation: st.generation,
                    next: 0,
                    trailers_sent: false,
                }))
            }
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
                    _ => None,
                }
            }
        }
    }

    /// Can another attempt be made with this body?
    pub fn replayable(&self) -> bool {
        match self {
            ReqBody::Buffered(..) => true,
            ReqBody::Tee(s) => !s.lock().unwrap_or_else(|p| p.into_inner()).overflow,
            ReqBody::Streaming(_) => false,
        }
    }
}

/// The client's body and the copy kept of it, shared by the attempts of one request.
pub struct TeeState {
    incoming: Body,
    /// Data frames read so far (while within `limit`).
    chunks: Vec<Bytes>,
    captured: u64,
    limit: u64,
    /// More than `limit` bytes were read: `chunks` is gone, no more attempts.
    overflow: bool,
    trailers: Option<http::HeaderMap>,
    /// The client's body ended (`trailers` set if it had any).
    done: bool,
    read: u64,
    /// The attempt allowed to read.
    generation: u64,
    /// [`ReqBody::when_complete`] callers.
    waiters: Vec<tokio::sync::oneshot::Sender<Option<Bytes>>>,
}

impl TeeState {
    fn whole(&self) -> Bytes {
        let mut b = bytes::BytesMut::with_capacity(self.captured as usize);
        for c in &self.chunks {
            b.extend_from_slice(c);
        }
        b.freeze()
    }

    /// The client's body ended: the waiters get it.
    fn finish(&mut self) {
        self.done = true;
        if !self.waiters.is_empty() {
            let whole = (!self.overflow).then(|| self.whole());
            for w in self.waiters.drain(..) {
                let _ = w.send(whole.clone());
            }
        }
    }

    /// More than `limit` bytes: the copy is gone; waiters get None.
    fn overflowed(&mut self) {
        self.overflow = true;
        self.chunks = Vec::new();
        for w in self.waiters.drain(..) {
            let _ = w.send(None);
        }
    }
}

/// One attempt's view of a [`TeeState`]: the copy first, then the client.
struct TeeAttempt {
    shared: Arc<Mutex<TeeState>>,
    generation: u64,
    /// Next chunk of the copy to send.
    next: usize,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

impl http_body::Body for TeeAttempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        let mut st = me.shared.lock().unwrap_or_else(|p| p.into_inner());
        if st.generation != me.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(c) = st.chunks.get(me.next) {
            me.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(c.clone()))));
        }
        if st.done {
            if !me.trailers_sent
                && let Some(t) = &st.trailers
            {
                me.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut st.incoming).poll_frame(cx));
        match frame {
            None => {
                st.finish();
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    st.read += d.len() as u64;
                    if !st.overflow {
                        if st.captured + d.len() as u64 > st.limit {
                            st.overflowed();
                        } else {
                            st.captured += d.len() as u64;
                            st.chunks.push(d.clone());
                            me.next = st.chunks.len();
                        }
                    }
                    if st.incoming.is_end_stream() {
                        st.finish();
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Err(f) => {
                    st.finish();
                    if let Ok(t) = f.into_trailers() {
                        st.trailers = Some(t.clone());
                        me.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        st.generation == self.generation
            && st.done
            && self.next >= st.chunks.len()
            && (self.trailers_sent || st.trailers.is_none())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio_stream::StreamExt as _;

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

    /// A client body fed frame by frame from the test.
    fn channel() -> (tokio::sync::mpsc::UnboundedSender<Frame<Bytes>>, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Frame<Bytes>>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(Ok::<_, std::convert::Infallible>);
        (tx, boxed(http_body_util::StreamBody::new(stream)))
    }

    #[tokio::test]
    async fn tee_streams_before_the_body_ends_and_replays_for_retries() {
        let (tx, client) = channel();
        let mut body = ReqBody::tee(client, 10);
        let mut first = body.attempt().unwrap();
        // The first frame reaches the upstream while the client is still sending (gRPC bidi).
        tx.send(Frame::data(Bytes::from_static(b"ping"))).unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ping");
        assert!(body.replayable());
        assert_eq!(body.bytes_read(), 4);
        // A retry replays what was read, then goes on with the client; the old attempt is cut off.
        let second = body.attempt().unwrap();
        assert!(first.frame().await.unwrap().is_err(), "superseded");
        tx.send(Frame::data(Bytes::from_static(b"pong"))).unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(Frame::trailers(t.clone())).unwrap();
        drop(tx);
        let got = second.collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&t));
        assert_eq!(got.to_bytes(), "pingpong");
        // A third attempt gets the whole copy, trailers included.
        let got = body.attempt().unwrap().collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&t));
        assert_eq!(got.to_bytes(), "pingpong");
        assert_eq!(body.bytes_read(), 8);
    }

    #[tokio::test]
    async fn tee_past_the_limit_streams_on_but_cannot_retry() {
        let (tx, client) = channel();
        let mut body = ReqBody::tee(client, 6);
        let mut first = body.attempt().unwrap();
        tx.send(Frame::data(Bytes::from_static(b"abcd"))).unwrap();
        tx.send(Frame::data(Bytes::from_static(b"efgh"))).unwrap();
        drop(tx);
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abcd"
        );
        assert!(body.replayable());
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "efgh"
        );
        assert!(first.frame().await.is_none());
        assert!(!body.replayable(), "more than the limit went by");
        assert!(body.attempt().is_none());
        assert_eq!(body.bytes_read(), 8);
    }

    #[tokio::test]
    async fn tee_not_polled_yet_is_whole_for_the_next_attempt() {
        // A connect failure drops the attempt's body before reading anything.
        let (tx, client) = channel();
        let mut body = ReqBody::tee(client, 64);
        drop(body.attempt().unwrap());
        tx.send(Frame::data(Bytes::from_static(b"late"))).unwrap();
        drop(tx);
        let got = body.attempt().unwrap().collect().await.unwrap();
        assert_eq!(got.to_bytes(), "late");
    }

    #[tokio::test]
    async fn deadline_cuts_a_body_still_streaming_and_spares_a_finished_one() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, slow) = channel();
        tx.send(Frame::data(Bytes::from_static(b"part"))).unwrap();
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        let mut b = Deadline::new(slow, Some(soon), flag.clone());
        assert_eq!(
            b.frame().await.unwrap().unwrap().into_data().unwrap(),
            "part"
        );
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(e.is::<TimedOut>(), "{e}");
        assert!(flag.load(std::sync::atomic::Ordering::Relaxed));
        drop(tx);

        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = Deadline::new(full("done"), Some(soon), flag.clone());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "done");
        assert!(!flag.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn mirrors_get_the_whole_body_once_it_ended_or_nothing_past_the_limit() {
        let (tx, client) = channel();
        let mut body = ReqBody::tee(client, 8);
        let done = body.when_complete().unwrap();
        let first = body.attempt().unwrap();
        tx.send(Frame::data(Bytes::from_static(b"ab"))).unwrap();
        tx.send(Frame::data(Bytes::from_static(b"cd"))).unwrap();
        drop(tx);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(done.await.unwrap(), Some(Bytes::from_static(b"abcd")));
        // Asked after the end: at once.
        assert_eq!(
            body.when_complete().unwrap().await.unwrap(),
            Some(Bytes::from_static(b"abcd"))
        );

        let (tx, client) = channel();
        let mut body = ReqBody::tee(client, 3);
        let done = body.when_complete().unwrap();
        let first = body.attempt().unwrap();
        tx.send(Frame::data(Bytes::from_static(b"abcd"))).unwrap();
        drop(tx);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(done.await.unwrap(), None, "too large to mirror");
        let buffered = ReqBody::Buffered(Bytes::from_static(b"x"), None);
        assert_eq!(
            buffered.when_complete().unwrap().await.unwrap(),
            Some(Bytes::from_static(b"x")),
            "a buffered body: at once"
        );
    }
}
