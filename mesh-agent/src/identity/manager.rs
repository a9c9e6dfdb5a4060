//! The certificate cache: on-demand fetches, prefetch and rotation of the node's identities.
//!
//! Concurrency, in short:
//! - One [`Entry`] per identity the node knows (tracked, or fetched on demand). Its `flight`
//!   lock serialises CA calls for that identity: whoever holds it makes the one call, everyone
//!   else waits and then takes the result (the new certificate, or the error of that call).
//! - Background work (prefetch of newly tracked identities, half-life renewals, retries) first
//!   takes a permit of a small semaphore (`background_concurrency`, default 2) and only then the
//!   identity's lock. On-demand [`CertManager::fetch`] never touches the semaphore, so a
//!   connection waiting for an identity the node has not fetched yet is never queued behind
//!   other identities' rotations — that is the whole priority scheme. A rotation already in flight
//!   for the *same* identity is simply joined (it is the request the caller needs anyway).
//! - Each entry has one rotation task (a tokio task holding only a `Weak` to the manager); it is
//!   aborted when the identity stops being tracked or the manager is dropped.
use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use mesh_common::proto::ca::{
    IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
};
use tokio::{sync::Semaphore, task::AbortHandle};
use tonic::{metadata::MetadataValue, transport::Channel};
use tracing::{debug, info, warn};

use super::{Identity, IdentityError, WorkloadCert, cert::generate_csr};
use crate::sources::controller::Credential;

/// Jitter of the half-life renewal time (±10%).
const RENEW_JITTER: f64 = 0.10;
/// Jitter of the retry backoff (±20%).
const BACKOFF_JITTER: f64 = 0.20;

/// How the manager reaches the CA and paces its requests.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The controller's certificate service, e.g. `http://mesh-controller:15012`. Plain HTTP/2
    /// like the config stream for now (mesh-controller serves 15012 without TLS), so the bearer
    /// token crosses the network in clear; `https://` needs tonic's TLS feature (not enabled).
    pub ca_address: String,
    /// The node credential sent as `authorization: Bearer …` (a token file is re-read per request).
    pub credential: Credential,
    /// Requested certificate lifetime (`validity_duration`, whole seconds; the CA may cap it).
    pub ttl: Duration,
    pub connect_timeout: Duration,
    /// Deadline of one CreateCertificate call.
    pub request_timeout: Duration,
    /// First retry delay after a failure; doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Concurrent background CA calls (prefetch, rotation); on-demand fetches are not limited.
    pub background_concurrency: usize,
    /// The mesh root (PEM) that verifies the CA's TLS certificate (`https://` addresses).
    pub ca_root_pem: Option<String>,
}

impl ManagerConfig {
    /// Defaults: 24 h certificates, 5 s connect / 10 s request timeouts, 1 s → 60 s backoff,
    /// 2 background requests at a time.
    pub fn new(ca_address: impl Into<String>, credential: impl Into<Credential>) -> Self {
        Self {
            ca_address: ca_address.into(),
            credential: credential.into(),
            ttl: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            background_concurrency: 2,
            ca_root_pem: None,
        }
    }
}

/// Where an identity's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// No certificate yet and no failure (the first request is queued or in flight).
    Pending,
    /// A valid certificate, nothing in progress, the last request succeeded.
    Valid,
    /// A request is in flight (the current certificate, if valid, is still served).
    Renewing,
    /// The last request failed; the current certificate (if any) is still valid and served.
    Failing,
    /// The certificate expired and no new one could be obtained.
    Expired,
}

impl CertState {
    /// `pending`, `valid`, `renewing`, `failing`, `expired` (admin output, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Valid => "valid",
            Self::Renewing => "renewing",
            Self::Failing => "failing",
            Self::Expired => "expired",
        }
    }
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One identity's certificate, for the admin endpoint and metrics.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub identity: Identity,
    pub state: CertState,
    pub serial: Option<String>,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    /// When the rotation task renews (half-life, jittered).
    pub renew_at: Option<SystemTime>,
    /// The CA's response (PEM, leaf first).
    pub chain_pem: Vec<String>,
    pub last_error: Option<String>,
    /// Successful renewals that replaced a certificate.
    pub rotations_total: u64,
    /// Certificates obtained (the first one included).
    pub issued_total: u64,
    /// Failed CA requests (refused, unreachable, or an invalid response).
    pub failures_total: u64,
}

impl CertInfo {
    /// Seconds until `not_after` (negative once expired); `None` without a certificate.
    pub fn expiry_seconds(&self, now: SystemTime) -> Option<f64> {
        self.not_after.map(|t| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }
}

/// Workload certificates for the identities on this node. Cheap to clone (one shared state).
/// Must be created inside a tokio runtime; its tasks run there.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    client: IstioCertificateServiceClient<Channel>,
    cfg: ManagerConfig,
    background: Semaphore,
    runtime: tokio::runtime::Handle,
    entries: Mutex<HashMap<Identity, Arc<Entry>>>,
}

/// The current certificate and when to renew it (fixed, jittered, when it was stored).
struct Slot {
    cert: Arc<WorkloadCert>,
    renew_at: SystemTime,
}

struct Entry {
    identity: Identity,
    slot: Mutex<Option<Slot>>,
    /// Held for the duration of a CA call for this identity.
    flight: tokio::sync::Mutex<()>,
    /// Completed CA calls (success or failure).
    attempts: AtomicU64,
    last_error: Mutex<Option<IdentityError>>,
    renewing: AtomicBool,
    rotations: AtomicU64,
    issued: AtomicU64,
    failures: AtomicU64,
    task: Mutex<Option<AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `d` scaled by a random factor in `[1 - frac, 1 + frac]`.
fn jitter(d: Duration, frac: f64) -> Duration {
    d.mul_f64(1.0 + frac * (fastrand::f64() * 2.0 - 1.0))
}

impl Entry {
    fn new(identity: Identity) -> Self {
        Self {
            identity,
            slot: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            renewing: AtomicBool::new(false),
            rotations: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            task: Mutex::new(None),
        }
    }

    /// The current certificate if it has not expired.
    fn valid(&self, now: SystemTime) -> Option<Arc<WorkloadCert>> {
        lock(&self.slot)
            .as_ref()
            .filter(|s| !s.cert.is_expired(now))
            .map(|s| s.cert.clone())
    }

    fn renew_at(&self) -> Option<SystemTime> {
        lock(&self.slot).as_ref().map(|s| s.renew_at)
    }

    fn not_after(&self) -> Option<SystemTime> {
        lock(&self.slot).as_ref().map(|s| s.cert.not_after)
    }

    fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }

    fn info(&self, now: SystemTime) -> CertInfo {
        let slot = lock(&self.slot);
        let cert = slot.as_ref().map(|s| &s.cert);
        let last_error = lock(&self.last_error).as_ref().map(|e| e.to_string());
        let renewing = self.renewing.load(Ordering::SeqCst);
        let state = match cert {
            Some(c) if c.is_expired(now) => CertState::Expired,
            _ if renewing => CertState::Renewing,
            _ if last_error.is_some() => CertState::Failing,
            Some(_) => CertState::Valid,
            None => CertState::Pending,
        };
        CertInfo {
            identity: self.identity.clone(),
            state,
            serial: cert.map(|c| c.serial.clone()),
            not_before: cert.map(|c| c.not_before),
            not_after: cert.map(|c| c.not_after),
            renew_at: slot.as_ref().map(|s| s.renew_at),
            chain_pem: cert.map(|c| c.chain_pem.clone()).unwrap_or_default(),
            last_error,
            rotations_total: self.rotations.load(Ordering::Relaxed),
            issued_total: self.issued.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// Clears `renewing` however the request ends (including a task being aborted mid-call).
struct RenewingGuard<'a>(&'a AtomicBool);

impl Drop for RenewingGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for e in lock(&self.entries).values() {
            e.stop();
        }
    }
}

impl CertManager {
    /// A manager for the CA at `cfg.ca_address` (connected lazily, on the first request).
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: ManagerConfig) -> Result<Self, IdentityError> {
        let address_err = |reason: String| IdentityError::CaAddress {
            address: cfg.ca_address.clone(),
            reason,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| address_err(format!("no tokio runtime: {e}")))?;
        let mut endpoint = tonic::transport::Endpoint::from_shared(cfg.ca_address.clone())
            .map_err(|e| address_err(e.to_string()))?;
        if let Some(root) = &cfg.ca_root_pem {
            endpoint = endpoint
                .tls_config(crate::sources::controller::tls_to_controller(root))
                .map_err(|e| address_err(format!("TLS: {e}")))?;
        }
        let channel = endpoint
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .connect_lazy();
        Ok(Self {
            inner: Arc::new(Inner {
                client: IstioCertificateServiceClient::new(channel),
                background: Semaphore::new(cfg.background_concurrency.max(1)),
                cfg,
                runtime,
                entries: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The certificate for `id`: the cached one while it has not expired (also while its
    /// renewal is failing), else one requested now. Concurrent callers share one CA call; this
    /// path does not queue behind background rotations. An identity fetched here is kept and
    /// rotated like a tracked one until the next [`track`](Self::track) that leaves it out.
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<WorkloadCert>, IdentityError> {
        let entry = self.inner.entry(id);
        if let Some(c) = entry.valid(SystemTime::now()) {
            return Ok(c);
        }
        let seen = entry.attempts.load(Ordering::SeqCst);
        let result = {
            let _flight = entry.flight.lock().await;
            if let Some(c) = entry.valid(SystemTime::now()) {
                Ok(c)
            } else if entry.attempts.load(Ordering::SeqCst) != seen
                && let Some(e) = lock(&entry.last_error).clone()
            {
                // The call we waited for just failed: report it rather than retry at once.
                Err(e)
            } else {
                self.inner.request_and_store(&entry).await
            }
        };
        self.inner.ensure_task(&entry);
        result
    }

    /// The cached certificate for `id` if it has not expired (no CA call; for synchronous
    /// callers such as a rustls certificate resolver).
    pub fn cached(&self, id: &Identity) -> Option<Arc<WorkloadCert>> {
        lock(&self.inner.entries)
            .get(id)
            .and_then(|e| e.valid(SystemTime::now()))
    }

    /// Sets the identities present on this node: newly seen ones are prefetched and then
    /// rotated in the background; the others stop rotating and their certificates are dropped.
    pub fn track(&self, ids: impl IntoIterator<Item = Identity>) {
        let wanted: BTreeSet<Identity> = ids.into_iter().collect();
        let (added, removed) = {
            let mut entries = lock(&self.inner.entries);
            let gone: Vec<Identity> = entries
                .keys()
                .filter(|id| !wanted.contains(*id))
                .cloned()
                .collect();
            let removed: Vec<Arc<Entry>> =
                gone.iter().filter_map(|id| entries.remove(id)).collect();
            let mut added = Vec::new();
            for id in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = entries.entry(id) {
                    let e = Arc::new(Entry::new(slot.key().clone()));
                    slot.insert(e.clone());
                    added.push(e);
                }
            }
            (added, removed)
        };
        for e in &removed {
            e.stop();
            info!(identity = %e.identity, "identity no longer on this node; certificate dropped");
        }
        for e in &added {
            debug!(identity = %e.identity, "identity tracked; prefetching its certificate");
            self.inner.ensure_task(e);
        }
    }

    /// The identities currently kept (tracked or fetched on demand).
    pub fn identities(&self) -> Vec<Identity> {
        let mut ids: Vec<Identity> = lock(&self.inner.entries).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Every kept identity's certificate, state and counters, sorted by identity.
    pub fn certs(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let mut out: Vec<CertInfo> = lock(&self.inner.entries)
            .values()
            .map(|e| e.info(now))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Inner {
    fn entry(&self, id: &Identity) -> Arc<Entry> {
        lock(&self.entries)
            .entry(id.clone())
            .or_insert_with(|| Arc::new(Entry::new(id.clone())))
            .clone()
    }

    /// Starts the rotation task of `entry` unless it runs already or the entry was dropped.
    fn ensure_task(self: &Arc<Self>, entry: &Arc<Entry>) {
        let current = lock(&self.entries)
            .get(&entry.identity)
            .is_some_and(|e| Arc::ptr_eq(e, entry));
        if !current {
            return;
        }
        let mut task = lock(&entry.task);
        if task.is_none() {
            let handle = self
                .runtime
                .spawn(rotate(Arc::downgrade(self), entry.clone()));
            *task = Some(handle.abort_handle());
        }
    }

    /// One CA call for `entry` (the caller holds its `flight` lock); stores the result.
    async fn request_and_store(&self, entry: &Entry) -> Result<Arc<WorkloadCert>, IdentityError> {
        entry.renewing.store(true, Ordering::SeqCst);
        let _renewing = RenewingGuard(&entry.renewing);
        let result = self.request(&entry.identity).await;
        entry.attempts.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(cert) => {
                let cert = Arc::new(cert);
                let life = cert.lifetime();
                let start = cert.refresh_at() - life / 2;
                let renew_at = (start + jitter(life / 2, RENEW_JITTER)).min(cert.not_after);
                let replaced = lock(&entry.slot).replace(Slot {
                    cert: cert.clone(),
                    renew_at,
                });
                *lock(&entry.last_error) = None;
                entry.issued.fetch_add(1, Ordering::Relaxed);
                if replaced.is_some() {
                    entry.rotations.fetch_add(1, Ordering::Relaxed);
                }
                info!(
                    identity = %entry.identity,
                    serial = %cert.serial,
                    not_after = %humantime::format_rfc3339_seconds(cert.not_after),
                    renew_at = %humantime::format_rfc3339_seconds(renew_at),
                    rotated = replaced.is_some(),
                    "certificate issued"
                );
                Ok(cert)
            }
            Err(e) => {
                entry.failures.fetch_add(1, Ordering::Relaxed);
                let serving = entry.valid(SystemTime::now()).map(|c| c.serial.clone());
                warn!(
                    identity = %entry.identity,
                    still_serving = serving.as_deref().unwrap_or("none"),
                    "certificate request failed: {e}"
                );
                *lock(&entry.last_error) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Generates a key, sends its CSR, checks the answer.
    async fn request(&self, id: &Identity) -> Result<WorkloadCert, IdentityError> {
        let (key, csr) = generate_csr(id)?;
        let token = self
            .cfg
            .credential
            .read()
            .map_err(IdentityError::Credential)?;
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            IdentityError::Credential("the token is not a valid header value".into())
        })?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.cfg.ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        });
        request.metadata_mut().insert("authorization", bearer);
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|s| {
                let source = std::error::Error::source(&s)
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                IdentityError::Ca {
                    identity: id.to_string(),
                    code: s.code(),
                    message: format!("{}{source}", s.message()),
                }
            })?;
        WorkloadCert::from_response(
            id,
            &key,
            &response.into_inner().cert_chain,
            SystemTime::now(),
        )
    }

    /// A background request: waits for a background permit (on-demand fetches skip this), then
    /// for the identity; skips the call if the certificate was renewed meanwhile.
    async fn renew_in_background(&self, entry: &Entry) -> Result<(), IdentityError> {
        let _permit = self.background.acquire().await;
        let _flight = entry.flight.lock().await;
        if entry.renew_at().is_some_and(|t| SystemTime::now() < t) {
            return Ok(());
        }
        self.request_and_store(entry).await.map(|_| ())
    }
}

/// The rotation task of one identity: (pre)fetch, sleep until the jittered half-life, renew;
/// on failure retry with jittered exponential backoff, always trying once shortly before the
/// current certificate expires. Holds only a `Weak` to the manager.
async fn rotate(manager: Weak<Inner>, entry: Arc<Entry>) {
    loop {
        let wait = entry
            .renew_at()
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut backoff = None;
        loop {
            let (result, initial, max) = {
                let Some(inner) = manager.upgrade() else {
                    return;
                };
                let r = inner.renew_in_background(&entry).await;
                (r, inner.cfg.backoff_initial, inner.cfg.backoff_max)
            };
            if result.is_ok() {
                break;
            }
            let next = backoff.map_or(initial, |b: Duration| (b * 2).min(max));
            backoff = Some(next);
            let mut delay = jitter(next, BACKOFF_JITTER);
            // Never sleep past the last chance to renew before the current certificate expires.
            if let Some(not_after) = entry.not_after() {
                let margin = (entry
                    .valid(SystemTime::now())
                    .map(|c| c.lifetime() / 20)
                    .unwrap_or_default())
                .min(Duration::from_secs(10));
                if let Ok(until) = (not_after - margin).duration_since(SystemTime::now()) {
                    delay = delay.min(until);
                }
            }
            debug!(identity = %entry.identity, ?delay, "retrying the certificate request");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testca::TestCa;
    use std::time::Instant;

    const TOKEN: &str = "node-token";

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "demo", sa)
    }

    async fn setup(ttl: Duration) -> (Arc<TestCa>, CertManager) {
        let ca = Arc::new(TestCa::new(TOKEN));
        let addr = ca.serve().await;
        let mut cfg = ManagerConfig::new(addr, TOKEN);
        cfg.ttl = ttl;
        cfg.backoff_initial = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_millis(400);
        cfg.request_timeout = Duration::from_secs(5);
        (ca, CertManager::new(cfg).unwrap())
    }

    fn calls(ca: &TestCa) -> usize {
        ca.calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn fetch_returns_a_checked_certificate() {
        let (ca, m) = setup(Duration::from_secs(3600)).await;
        let t = Instant::now();
        let cert = m.fetch(&id("web")).await.unwrap();
        let first = t.elapsed();
        assert_eq!(cert.identity, id("web"));
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots.len(), 1);
        assert_eq!(cert.chain_pem[1], ca.root_pem);
        let ck = cert.certified_key();
        assert!(ck.keys_match().is_ok());
        assert_eq!(ck.end_entity_cert().unwrap(), &cert.chain[0]);
        // rustls accepts the chain with the root as trust anchor.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.roots[0].clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(
                &cert.chain[0],
                &cert.chain[1..],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        // Cached: no second call.
        let t = Instant::now();
        let again = m.fetch(&id("web")).await.unwrap();
        let cached = t.elapsed();
        assert!(Arc::ptr_eq(&cert, &again));
        assert!(Arc::ptr_eq(&cert, &m.cached(&id("web")).unwrap()));
        assert_eq!(calls(&ca), 1);
        let info = m.certs();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].state, CertState::Valid);
        assert_eq!(info[0].serial.as_deref(), Some(cert.serial.as_str()));
        assert_eq!((info[0].issued_total, info[0].rotations_total), (1, 0));
        let exp = info[0].expiry_seconds(SystemTime::now()).unwrap();
        assert!(exp > 3590.0 && exp <= 3600.0, "{exp}");
        let t = Instant::now();
        m.fetch(&id("db")).await.unwrap();
        let second = t.elapsed();
        eprintln!(
            "first fetch (connect + keygen + CA + checks): {first:?}; next identity (connected): \
             {second:?}; cached fetch: {cached:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_fetches_share_one_call() {
        let (ca, m) = setup(Duration::from_secs(3600)).await;
        *ca.delay.lock().unwrap() = Duration::from_millis(200);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.fetch(&id("web")).await })
            })
            .collect();
        let mut serials = BTreeSet::new();
        for t in tasks {
            serials.insert(t.await.unwrap().unwrap().serial.clone());
        }
        assert_eq!(serials.len(), 1);
        assert_eq!(calls(&ca), 1);
    }

    #[tokio::test]
    async fn concurrent_fetches_share_one_failure() {
        let (ca, m) = setup(Duration::from_secs(3600)).await;
        *ca.delay.lock().unwrap() = Duration::from_millis(200);
        ca.fail.store(1, Ordering::SeqCst);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.fetch(&id("web")).await })
            })
            .collect();
        for t in tasks {
            let e = t.await.unwrap().unwrap_err().to_string();
            assert!(e.contains("test CA is failing"), "{e}");
        }
        assert_eq!(calls(&ca), 1);
    }

    #[tokio::test]
    async fn a_bad_token_is_a_clear_error() {
        let (ca, _) = setup(Duration::from_secs(3600)).await;
        let m = CertManager::new(ManagerConfig::new(ca.serve().await, "wrong")).unwrap();
        let e = m.fetch(&id("web")).await.unwrap_err();
        assert!(
            matches!(
                &e,
                IdentityError::Ca {
                    code: tonic::Code::Unauthenticated,
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("spiffe://cluster.local/ns/demo/sa/web") && text.contains("bad bearer"),
            "{text}"
        );
        assert_eq!(m.certs()[0].state, CertState::Failing);
        assert_eq!(m.certs()[0].failures_total, 1);

        let missing = std::path::PathBuf::from("/nonexistent/weft-token");
        let m = CertManager::new(ManagerConfig::new(
            ca.serve().await,
            Credential::File(missing),
        ))
        .unwrap();
        let e = m.fetch(&id("web")).await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/weft-token"), "{e}");

        // A token file is re-read for every request (the kubelet rotates projected tokens).
        let file = std::env::temp_dir().join(format!("weft-identity-token-{}", std::process::id()));
        std::fs::write(&file, "stale\n").unwrap();
        let m = CertManager::new(ManagerConfig::new(
            ca.serve().await,
            Credential::File(file.clone()),
        ))
        .unwrap();
        let e = m.fetch(&id("web")).await.unwrap_err().to_string();
        assert!(e.contains("Unauthenticated"), "{e}");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        m.fetch(&id("web")).await.unwrap();
        std::fs::remove_file(&file).unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_ca_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let m = CertManager::new(ManagerConfig::new(format!("http://{addr}"), TOKEN)).unwrap();
        let e = m.fetch(&id("web")).await.unwrap_err();
        assert!(
            matches!(
                &e,
                IdentityError::Ca {
                    code: tonic::Code::Unavailable,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(CertManager::new(ManagerConfig::new("not a uri", TOKEN)).is_err());
    }

    #[tokio::test]
    async fn a_certificate_for_another_identity_is_refused() {
        let (ca, m) = setup(Duration::from_secs(3600)).await;
        *ca.san_override.lock().unwrap() = Some("spiffe://cluster.local/ns/demo/sa/admin".into());
        let e = m.fetch(&id("web")).await.unwrap_err();
        assert!(matches!(e, IdentityError::InvalidResponse { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("is for spiffe://cluster.local/ns/demo/sa/admin, not the requested spiffe://cluster.local/ns/demo/sa/web"),
            "{text}"
        );
        assert!(m.cached(&id("web")).is_none());
    }

    #[tokio::test]
    async fn rotates_at_half_life() {
        let (ca, m) = setup(Duration::from_secs(4)).await;
        let t0 = Instant::now();
        m.track([id("web")]);
        let first = loop {
            if let Some(c) = m.cached(&id("web")) {
                break c;
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "prefetch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let issued = Instant::now();
        let lifetime = first.lifetime();
        let rotated = loop {
            let c = m.fetch(&id("web")).await.unwrap();
            if c.serial != first.serial {
                break c;
            }
            assert!(issued.elapsed() < Duration::from_secs(4), "no rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let after = issued.elapsed();
        // Half of a 3–4 s lifetime (whole-second validity), ±10%, plus slack for a busy machine.
        let half = lifetime / 2;
        assert!(
            after >= half.mul_f64(0.85) && after <= half.mul_f64(1.1) + Duration::from_secs(1),
            "rotated after {after:?}, lifetime {lifetime:?}"
        );
        assert_ne!(
            rotated.certified_key().cert[0],
            first.certified_key().cert[0]
        );
        let info = &m.certs()[0];
        assert_eq!((info.issued_total, info.rotations_total), (2, 1));
        assert_eq!(calls(&ca), 2);
        eprintln!("lifetime {lifetime:?}: rotated after {after:?}");
    }

    #[tokio::test]
    async fn keeps_the_old_certificate_while_failing_until_it_expires() {
        let (ca, m) = setup(Duration::from_secs(4)).await;
        let first = m.fetch(&id("web")).await.unwrap();
        ca.fail.store(usize::MAX, Ordering::SeqCst);
        let expired_err = loop {
            match m.fetch(&id("web")).await {
                Ok(c) => {
                    assert_eq!(c.serial, first.serial);
                    assert!(!c.is_expired(SystemTime::now()));
                    if SystemTime::now() > first.refresh_at() + Duration::from_millis(500) {
                        // Renewal has been failing for a while: reported, still served.
                        let info = &m.certs()[0];
                        assert!(
                            matches!(info.state, CertState::Failing | CertState::Renewing),
                            "{info:?}"
                        );
                    }
                }
                Err(e) => break e,
            }
            assert!(SystemTime::now() < first.not_after + Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(SystemTime::now() >= first.not_after);
        assert!(
            expired_err.to_string().contains("test CA is failing"),
            "{expired_err}"
        );
        let info = &m.certs()[0];
        assert_eq!(info.state, CertState::Expired);
        assert!(info.failures_total >= 3, "{info:?}");
        assert!(info.last_error.as_deref().unwrap_or("").contains("failing"));
        // Failures were retried with backoff, not in a tight loop.
        assert!(calls(&ca) < 20, "{} calls", calls(&ca));
        // The CA recovers: the next fetch gets a new certificate.
        ca.fail.store(0, Ordering::SeqCst);
        let mut fresh = m.fetch(&id("web")).await;
        for _ in 0..10 {
            if fresh.is_ok() {
                break;
            }
            // A background retry that started before the recovery may still report a failure.
            tokio::time::sleep(Duration::from_millis(100)).await;
            fresh = m.fetch(&id("web")).await;
        }
        assert_ne!(fresh.unwrap().serial, first.serial);
    }

    #[tokio::test]
    async fn untracking_stops_rotation_and_drops_the_certificate() {
        let (ca, m) = setup(Duration::from_secs(2)).await;
        m.track([id("web"), id("db")]);
        let t0 = Instant::now();
        while m.cached(&id("web")).is_none() || m.cached(&id("db")).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(2), "prefetch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        m.track([id("db")]);
        assert!(m.cached(&id("web")).is_none());
        assert_eq!(m.identities(), vec![id("db")]);
        let web = id("web").to_string();
        let before = ca.calls_for(&web);
        assert_eq!(before, 1);
        // db keeps rotating (1 s half-life); web does not.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(ca.calls_for(&web), before);
        assert!(ca.calls_for(&id("db").to_string()) >= 2);
        // Dropping the manager stops the remaining task.
        drop(m);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let db = ca.calls_for(&id("db").to_string());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ca.calls_for(&id("db").to_string()), db);
    }

    #[tokio::test]
    async fn on_demand_fetches_do_not_wait_for_background_work() {
        let ca = Arc::new(TestCa::new(TOKEN));
        let mut cfg = ManagerConfig::new(ca.serve().await, TOKEN);
        cfg.background_concurrency = 1;
        let m = CertManager::new(cfg).unwrap();
        ca.slow
            .lock()
            .unwrap()
            .insert(id("slow").to_string(), Duration::from_secs(2));
        // The single background permit is busy with a slow prefetch; "queued" waits behind it.
        m.track([id("slow"), id("queued")]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let cert = m.fetch(&id("urgent")).await.unwrap();
        let took = t.elapsed();
        assert_eq!(cert.identity, id("urgent"));
        assert!(took < Duration::from_secs(1), "{took:?}");
        // An on-demand fetch of an identity whose prefetch is queued does not wait either.
        let t = Instant::now();
        if m.cached(&id("queued")).is_none() {
            m.fetch(&id("queued")).await.unwrap();
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        }
        eprintln!("on-demand fetch behind a busy background queue: {took:?}");
    }
}
