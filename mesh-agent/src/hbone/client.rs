//! The HBONE client: per source pod, pooled HTTP/2-over-mTLS connections to destination
//! `<podIP>:15008`, keyed by (source pod, source identity, destination identity, destination
//! address); each proxied connection is one CONNECT stream. A connection carries at most
//! [`MAX_STREAMS`] streams (then another one opens); connections idle for [`IDLE`] are released.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use rustls::pki_types::ServerName;
use tracing::debug;

use super::{
    CONNECTION_WINDOW, CertSource, HboneError, MAX_FRAME, MAX_HEADER_LIST, MAX_STREAMS,
    STREAM_WINDOW, tls,
};
use crate::proxy::PodCtx;

/// Idle connections are released after this long.
pub const IDLE: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused connects are retried this often, 25, 50, 100, 200 ms apart (375 ms in all).
const REFUSED_RETRIES: u32 = 4;
const REFUSED_BACKOFF: Duration = Duration::from_millis(25);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    src_pod: String,
    src_identity: String,
    dst_identity: String,
    dst: SocketAddr,
}

struct Conn {
    send: SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_used: Instant,
}

/// Where to tunnel to.
#[derive(Clone, Debug)]
pub struct Target {
    /// `<dstPodIP>:15008`.
    pub via: SocketAddr,
    /// `<dstPodIP>:<targetPort>`.
    pub authority: SocketAddr,
    /// The destination workload's SPIFFE ID (verified against the server's certificate).
    pub identity: String,
}

/// An open CONNECT stream; dropping it releases its slot in the pooled connection.
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    _slot: Slot,
}

/// A stream's place in its pooled connection.
pub struct Slot(Arc<AtomicUsize>);

impl Tunnel {
    pub fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Slot) {
        (self.send, self.recv, self._slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, Vec<Conn>>>,
}

impl Pool {
    /// Opens a CONNECT stream to `target` on behalf of `pod` (its identity `src_identity`).
    pub async fn connect(
        &self,
        pod: &Arc<PodCtx>,
        src_identity: &str,
        certs: &dyn CertSource,
        target: &Target,
        headers: &[(&'static str, String)],
    ) -> Result<Tunnel, HboneError> {
        let key = Key {
            src_pod: pod.uid.clone(),
            src_identity: src_identity.to_string(),
            dst_identity: target.identity.clone(),
            dst: target.via,
        };
        let (mut send, streams) = match self.checkout(&key) {
            Some(c) => c,
            None => self.open(pod, &key, certs).await?,
        };
        let slot = Slot(streams);
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.authority.to_string());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(())
            .map_err(|e| HboneError::Tls(target.via, e.to_string()))?;
        send = send
            .ready()
            .await
            .map_err(|e| HboneError::H2(target.via, e))?;
        let (resp, stream) = send
            .send_request(req, false)
            .map_err(|e| HboneError::H2(target.via, e))?;
        let resp = resp.await.map_err(|e| HboneError::H2(target.via, e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(HboneError::Status {
                via: target.via,
                authority: target.authority,
                status: resp.status().as_u16(),
            });
        }
        Ok(Tunnel {
            send: stream,
            recv: resp.into_body(),
            _slot: slot,
        })
    }

    /// A pooled connection with a free stream slot (the slot is taken).
    fn checkout(&self, key: &Key) -> Option<(SendRequest<Bytes>, Arc<AtomicUsize>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Release closed connections and connections idle for too long (dropping the last
        // SendRequest lets h2 close the connection once its streams are done).
        conns.retain(|_, v| {
            v.retain(|c| {
                !c.closed.load(Ordering::Acquire)
                    && (c.streams.load(Ordering::Acquire) > 0 || now - c.last_used < IDLE)
            });
            !v.is_empty()
        });
        let list = conns.get_mut(key)?;
        let c = list
            .iter_mut()
            .find(|c| c.streams.load(Ordering::Acquire) < MAX_STREAMS)?;
        c.streams.fetch_add(1, Ordering::AcqRel);
        c.last_used = now;
        Some((c.send.clone(), c.streams.clone()))
    }

    async fn open(
        &self,
        pod: &Arc<PodCtx>,
        key: &Key,
        certs: &dyn CertSource,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicUsize>), HboneError> {
        let via = key.dst;
        let roots = certs.roots().ok_or(HboneError::NoTrustBundle)?;
        let cert = certs
            .cert(&key.src_identity)
            .await
            .map_err(|e| HboneError::Cert(key.src_identity.clone(), e))?;
        let config = tls::client_config(cert, roots, vec![key.dst_identity.clone()])
            .map_err(|e| HboneError::Tls(via, e.to_string()))?;
        // A refused connect usually means the destination's agent is still enrolling the pod the
        // controller already published (tens of ms): retry briefly before giving up.
        let mut delay = REFUSED_BACKOFF;
        let mut retries = 0;
        let tcp = loop {
            let sock = pod
                .socket(via.is_ipv4())
                .await
                .map_err(|e| HboneError::Connect(via, e))?;
            match sock.connect(via).await {
                Ok(tcp) => break tcp,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && retries < REFUSED_RETRIES =>
                {
                    debug!(%via, retries, "HBONE connect refused: retrying");
                    retries += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(HboneError::Connect(via, e)),
            }
        };
        let tls_stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(via.ip().into()), tcp),
        )
        .await
        .map_err(|_| HboneError::Tls(via, "handshake timed out".into()))?
        .map_err(|e| HboneError::Tls(via, e.to_string()))?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(tls_stream)
            .await
            .map_err(|e| HboneError::H2(via, e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%via, "HBONE connection ended: {e}");
            }
            c.store(true, Ordering::Release);
        });
        let streams = Arc::new(AtomicUsize::new(1));
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push(Conn {
                send: send.clone(),
                streams: streams.clone(),
                closed,
                last_used: Instant::now(),
            });
        Ok((send, streams))
    }

    /// Open pooled connections (for the admin endpoint and tests).
    pub fn connections(&self) -> Vec<(String, String, String, SocketAddr, usize)> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .iter()
            .flat_map(|(k, v)| {
                v.iter()
                    .filter(|c| !c.closed.load(Ordering::Acquire))
                    .map(|c| {
                        (
                            k.src_pod.clone(),
                            k.src_identity.clone(),
                            k.dst_identity.clone(),
                            k.dst,
                            c.streams.load(Ordering::Acquire),
                        )
                    })
            })
            .collect()
    }

    /// Drops every pooled connection of a pod (un-enrolled).
    pub fn forget_pod(&self, uid: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.src_pod != uid);
    }
}
