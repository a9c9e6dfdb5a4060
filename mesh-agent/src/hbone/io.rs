//! One HBONE CONNECT stream as a byte stream (`AsyncRead + AsyncWrite`), so HTTP can be spoken
//! inside it (the L7 proxy's upstream connections to meshed endpoints). Flow control: received
//! data releases its window once handed to the reader; writes wait for send capacity. Shutdown
//! sends END_STREAM; dropping the stream without a shutdown resets it (h2 does on drop).
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::Tunnel;

pub struct TunnelIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The client side's slot in its pooled connection (released on drop).
    _tunnel: Option<super::client::Slot>,
    /// Received data not yet read.
    pending: Bytes,
    eof: bool,
}

impl TunnelIo {
    /// The client side: an opened tunnel.
    pub fn new(tunnel: Tunnel) -> Self {
        let (send, recv, slot) = tunnel.into_parts();
        Self {
            send,
            recv,
            _tunnel: Some(slot),
            pending: Bytes::new(),
            eof: false,
        }
    }

    /// The server side: an accepted CONNECT stream.
    pub fn from_streams(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            _tunnel: None,
            pending: Bytes::new(),
            eof: false,
        }
    }

    fn parts(&mut self) -> (&mut SendStream<Bytes>, &mut RecvStream) {
        (&mut self.send, &mut self.recv)
    }
}

fn io_err(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| std::io::Error::other("h2 I/O error"))
    } else {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        loop {
            if !me.pending.is_empty() {
                let n = me.pending.len().min(buf.remaining());
                buf.put_slice(&me.pending[..n]);
                me.pending.advance(n);
                let _ = me.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(me.parts().1.poll_data(cx)) {
                Some(Ok(d)) => me.pending = d,
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                None => me.eof = true,
            }
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = self.parts().0;
        send.reserve_capacity(buf.len());
        let cap = match ready!(send.poll_capacity(cx)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            None => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "tunnel stream closed",
                )));
            }
        };
        let n = cap.min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_err)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let send = self.parts().0;
        // Already ended or reset: nothing left to do.
        let _ = send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}
