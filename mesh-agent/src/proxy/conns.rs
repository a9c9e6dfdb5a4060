//! The node proxy's open connections: listed by the admin endpoint (`/connections`) and re-checked
//! when policies change (a connection no longer allowed is closed with a reset). An entry lives as
//! long as its [`ConnGuard`].
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Serialize)]
pub struct ConnInfo {
    /// `outbound` (this node's pod is the client) or `inbound`.
    pub direction: &'static str,
    /// `hbone` or `plain`.
    pub transport: &'static str,
    /// `namespace/name` of this node's pod.
    pub pod: String,
    /// The pod's UID (policies are looked up by it).
    #[serde(skip)]
    pub pod_uid: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Verified peer identities (`None`: plaintext).
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub opened_unix_ms: u64,
}

struct Entry {
    info: ConnInfo,
    cancel: CancellationToken,
}

#[derive(Default)]
pub struct ConnRegistry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Entry>>,
}

/// Removes its entry when dropped; `cancelled()` fires when the connection must close.
pub struct ConnGuard {
    id: u64,
    registry: Arc<ConnRegistry>,
    pub cancel: CancellationToken,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl ConnRegistry {
    pub fn register(self: &Arc<Self>, mut info: ConnInfo) -> ConnGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        info.opened_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let cancel = CancellationToken::new();
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                info,
                cancel: cancel.clone(),
            },
        );
        ConnGuard {
            id,
            registry: self.clone(),
            cancel,
        }
    }

    pub fn list(&self) -> Vec<ConnInfo> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// Closes every open connection for which `still_allowed` says no; returns how many.
    pub fn recheck(&self, still_allowed: impl Fn(&ConnInfo) -> Result<(), String>) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for e in open.values() {
            if let Err(reason) = still_allowed(&e.info) {
                tracing::info!(pod = e.info.pod, src = %e.info.src, dst = %e.info.dst, src_identity = ?e.info.src_identity, "closing a connection no longer allowed: {reason}");
                e.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pod: &str) -> ConnInfo {
        ConnInfo {
            direction: "inbound",
            transport: "hbone",
            pod: pod.into(),
            pod_uid: pod.into(),
            src: "10.0.0.1:1".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            src_identity: Some("spiffe://td/ns/a/sa/b".into()),
            dst_identity: None,
            opened_unix_ms: 0,
        }
    }

    #[test]
    fn register_list_recheck_and_drop() {
        let r = Arc::new(ConnRegistry::default());
        let a = r.register(info("a"));
        let b = r.register(info("b"));
        assert_eq!(r.list().len(), 2);
        let n = r.recheck(|c| {
            if c.pod == "a" {
                Err("denied".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(n, 1);
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
        drop(a);
        assert_eq!(r.list().len(), 1);
        drop(b);
        assert!(r.list().is_empty());
    }
}
