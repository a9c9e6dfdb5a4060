//! Bidirectional copy between an app's TCP socket and one HBONE (HTTP/2 CONNECT) stream, with
//! half-close both ways (TCP FIN ↔ END_STREAM) and resets both ways (RST ↔ RST_STREAM).
use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Read size towards the tunnel (ztunnel grows 1 KB → 256 KB; one 64 KB buffer is the middle).
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Copied {
    /// App → tunnel.
    pub sent: u64,
    /// Tunnel → app.
    pub received: u64,
    /// Why the copy ended abnormally (the other side was reset).
    pub error: Option<String>,
}

/// Copies until both directions are closed, or resets both on an error.
pub async fn bidi(tcp: TcpStream, mut send: SendStream<Bytes>, mut recv: RecvStream) -> Copied {
    let (mut rd, mut wr) = tcp.into_split();
    let mut out = Copied::default();
    {
        let up = async {
            let mut sent = 0u64;
            let mut buf = BytesMut::with_capacity(CHUNK);
            loop {
                buf.reserve(CHUNK);
                let n = rd.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    send.send_data(Bytes::new(), true)
                        .map_err(|e| e.to_string())?;
                    return Ok::<_, String>(sent);
                }
                let mut chunk = buf.split().freeze();
                while !chunk.is_empty() {
                    send.reserve_capacity(chunk.len());
                    let cap = match poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("tunnel stream closed".into()),
                    };
                    let part = chunk.split_to(cap.min(chunk.len()));
                    sent += part.len() as u64;
                    send.send_data(part, false).map_err(|e| e.to_string())?;
                }
            }
        };
        let down = async {
            let mut received = 0u64;
            while let Some(data) = recv.data().await {
                let data = data.map_err(|e| e.to_string())?;
                wr.write_all(&data).await.map_err(|e| e.to_string())?;
                received += data.len() as u64;
                let _ = recv.flow_control().release_capacity(data.len());
            }
            wr.shutdown().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(received)
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(n) => { out.sent = n; up_done = true; }
                    Err(e) => { out.error = Some(e); break; }
                },
                r = &mut down, if !down_done => match r {
                    Ok(n) => { out.received = n; down_done = true; }
                    Err(e) => { out.error = Some(e); break; }
                },
            }
        }
    }
    if out.error.is_some() {
        // Reset both sides: the tunnel stream with CANCEL, the app socket with RST.
        send.send_reset(h2::Reason::CANCEL);
        if let Ok(tcp) = rd.reunite(wr) {
            crate::proxy::relay::reset(&tcp);
        }
    }
    out
}
