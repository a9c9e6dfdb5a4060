//! The node proxy's L4 path (plain TCP; the mTLS tunnel is a later issue).
//!
//! - outbound (`127.0.0.1:15001` in the client pod): recover the original destination recorded by
//!   the eBPF hooks, connect to it from inside the client pod's netns (the server sees the pod's IP),
//!   copy both ways.
//! - inbound (`:15006` in the server pod): the accepted socket's local address is the original
//!   destination; connect to the app over loopback inside the pod netns, copy both ways.
//!
//! Half-close is propagated (a FIN on one side shuts down writing on the other); a reset on either
//! side resets the other (SO_LINGER 0).
pub mod baseline;
pub mod inbound;
pub mod outbound;
pub mod relay;

use std::{net::Ipv4Addr, sync::Arc};

use crate::{metrics::Metrics, pods::worker::NetnsWorker};

/// What the proxy knows about one enrolled pod.
pub struct PodCtx {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub netns_cookie: u64,
    pub worker: NetnsWorker,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the pod is deleted: its proxied connections close.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl PodCtx {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
