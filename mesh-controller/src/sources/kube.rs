//! `kube` source: one kube-runtime watcher per kind the mesh reads (paged list, then watch from the
//! list's resourceVersion with bookmarks; a `410 Gone` or a broken watch relists; errors back off
//! exponentially, 0.8 s → 30 s). Each watcher keeps its kind in the shared [`Store`] up to date: a
//! (re)list replaces the kind atomically at `InitDone`, so objects deleted while the watch was down
//! disappear, and nothing is dropped before the new list is complete.
use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};
use serde_json::Value;
use tracing::{info, warn};

use crate::model::{Store, key_of};

/// A kind the controller watches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Watched {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

const fn w(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Watched {
    Watched {
        group,
        version,
        kind,
        plural,
    }
}

/// Everything the model needs: the cluster's workloads and the mesh resources users apply.
pub const WATCHED: &[Watched] = &[
    w("", "v1", "Namespace", "namespaces"),
    w("", "v1", "Pod", "pods"),
    w("", "v1", "Service", "services"),
    w("", "v1", "ServiceAccount", "serviceaccounts"),
    w("", "v1", "Node", "nodes"),
    w("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    w(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    w(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    w(
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    w("networking.istio.io", "v1", "Gateway", "gateways"),
    w(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    w(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    w(
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    w("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    w("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
];

impl Watched {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// The JSON the model stores for a watched object: list items carry no kind/apiVersion, so they are
/// set here; `managedFields` is dropped (large, never read).
pub fn to_model_value(w: &Watched, obj: &DynamicObject) -> Option<Value> {
    let mut v = serde_json::to_value(obj).ok()?;
    let o = v.as_object_mut()?;
    o.insert("kind".into(), Value::String(w.kind.into()));
    o.insert("apiVersion".into(), Value::String(w.api_version()));
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Some(v)
}

async fn watch_kind(
    client: Client,
    w: Watched,
    store: Arc<Store>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let api: Api<DynamicObject> = Api::all_with(client, &w.api_resource());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<BTreeMap<String, Value>> = None;
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(o)) => {
                if let Some((key, v)) = keyed(&w, &o) {
                    listing.get_or_insert_with(BTreeMap::new).insert(key, v);
                }
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                if failing {
                    info!(kind = w.kind, "watch recovered");
                    failing = false;
                }
                info!(kind = w.kind, objects = objects.len(), "listed");
                store.replace_kind(w.kind, objects);
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Apply(o)) => {
                if let Some((_, v)) = keyed(&w, &o) {
                    store.apply(v);
                }
            }
            Ok(Event::Delete(o)) => {
                if let Some((key, _)) = keyed(&w, &o) {
                    store.delete(w.kind, &key);
                }
            }
            Err(e) if not_served(&e) => {
                if !failing {
                    warn!(
                        kind = w.kind,
                        api = w.api_version(),
                        "not served by the API server (CRD not installed?): treated as empty; retrying with backoff"
                    );
                    failing = true;
                }
                store.replace_kind(w.kind, BTreeMap::new());
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            Err(e) => {
                // Logged once per outage; the watcher retries with backoff and the last listed
                // objects stay in effect meanwhile.
                if !failing {
                    warn!(
                        kind = w.kind,
                        api = w.api_version(),
                        "watch failed (retrying with backoff; last listed objects stay in effect): {e}"
                    );
                    failing = true;
                }
            }
        }
    }
}

fn keyed(w: &Watched, o: &DynamicObject) -> Option<(String, Value)> {
    let v = to_model_value(w, o)?;
    let (_, key) = key_of(&v)?;
    Some((key, v))
}

/// Is this watcher error "the API server does not serve this kind" (a CRD that is not installed)?
fn not_served(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => e,
        _ => return false,
    };
    matches!(api, kube::Error::Api(s) if s.code == 404)
}

/// Starts one watcher task per kind; they run until the process ends. The returned future resolves
/// once every kind has been listed (or found not served), so the config stream never serves a
/// half-listed cluster (agents would un-enrol the pods of a namespace not yet listed).
pub fn spawn(client: Client, store: Arc<Store>) -> impl std::future::Future<Output = ()> {
    let mut synced = vec![];
    for w in WATCHED {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(watch_kind(client.clone(), *w, store.clone(), tx));
        synced.push(rx);
    }
    async move {
        for rx in synced {
            let _ = rx.await;
        }
        info!("initial list of every kind complete");
    }
}

/// Label Weft's own CRDs carry (deploy/crds/kustomization.yaml); a CRD of a watched kind without
/// it was installed by someone else (a real Istio install).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// What the cluster's CRDs mean for the kinds Weft watches. Pure (table-tested): `crds` are
/// CustomResourceDefinition objects as JSON.
pub fn crd_findings(crds: &[Value]) -> Vec<(crate::validate::Severity, String)> {
    use crate::validate::Severity;
    let mut out = vec![];
    for w in WATCHED.iter().filter(|w| w.group.contains('.')) {
        let name = format!("{}.{}", w.plural, w.group);
        let Some(crd) = crds
            .iter()
            .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(&name))
        else {
            out.push((
                Severity::Info,
                format!(
                    "CRD {name} is not installed: {} objects are treated as absent",
                    w.kind
                ),
            ));
            continue;
        };
        let served: Vec<&str> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect();
        if !served.contains(&w.version) {
            out.push((
                Severity::Error,
                format!(
                    "CRD {name} does not serve {}: Weft cannot read {} objects (served: {})",
                    w.version,
                    w.kind,
                    served.join(", ")
                ),
            ));
            continue;
        }
        let ours = crd
            .pointer("/metadata/labels")
            .and_then(|l| l.get(PART_OF.0))
            .and_then(Value::as_str)
            == Some(PART_OF.1);
        if !ours && !w.group.ends_with("k8s.io") {
            out.push((
                Severity::Warning,
                format!(
                    "CRD {name} was not installed by Weft (no label {}={}; served: {}): it is \
                     left as it is and read through {}; fields Weft does not support are reported \
                     by `mesh-controller analyze`",
                    PART_OF.0,
                    PART_OF.1,
                    served.join(", "),
                    w.version
                ),
            ));
        }
    }
    out
}

/// Logs [`crd_findings`] for the cluster (best effort: a controller without CRD read access only
/// says so).
pub async fn report_foreign_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = match api.list(&Default::default()).await {
        Ok(l) => l
            .items
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect::<Vec<_>>(),
        Err(e) => {
            warn!("cannot list CustomResourceDefinitions to check for foreign Istio CRDs: {e}");
            return;
        }
    };
    for (sev, msg) in crd_findings(&crds) {
        match sev {
            crate::validate::Severity::Error => tracing::error!("{msg}"),
            crate::validate::Severity::Warning => warn!("{msg}"),
            crate::validate::Severity::Info => info!("{msg}"),
        }
    }
}

/// The CA root from the Secret `namespace/name` (keys `root-cert.pem`, `root-key.pem`), generated
/// and created on first start. If another replica created it first, that one is used.
pub async fn load_or_create_ca(
    client: &Client,
    secret: &str,
    trust_domain: &str,
) -> anyhow::Result<crate::ca::Ca> {
    use anyhow::Context as _;
    use k8s_openapi::{ByteString, api::core::v1::Secret};
    let (ns, name) = secret
        .split_once('/')
        .with_context(|| format!("--ca-secret {secret:?}: expected namespace/name"))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let field = |s: &Secret, k: &str| -> anyhow::Result<String> {
        let b = s
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .with_context(|| format!("Secret {secret}: field data.{k} is missing"))?;
        String::from_utf8(b.0.clone())
            .with_context(|| format!("Secret {secret}: data.{k} is not PEM"))
    };
    for _ in 0..2 {
        if let Some(s) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {secret}"))?
        {
            let ca = crate::ca::Ca::from_pem(
                &field(&s, "root-cert.pem")?,
                &field(&s, "root-key.pem")?,
                trust_domain,
            )
            .map_err(|e| anyhow::anyhow!("Secret {secret}: {e}"))?;
            info!(secret, "CA root loaded");
            return Ok(ca);
        }
        let (cert, key) = crate::ca::generate_root(trust_domain).map_err(anyhow::Error::msg)?;
        let new = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some([(PART_OF.0.to_string(), PART_OF.1.to_string())].into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    ("root-cert.pem".to_string(), ByteString(cert.into_bytes())),
                    ("root-key.pem".to_string(), ByteString(key.into_bytes())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&Default::default(), &new).await {
            Ok(_) => info!(
                secret,
                "generated a new CA root and stored it in the Secret"
            ),
            // Another replica won the race: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating Secret {secret}")),
        }
    }
    anyhow::bail!("Secret {secret}: created but not readable")
}

/// Publishes the mesh root as the ConfigMap `weft-ca-root` (key `root-cert.pem`) in `namespace`: the
/// agents mount it to verify the controller's TLS certificate (server-side apply, idempotent).
pub async fn publish_root(client: &Client, namespace: &str, root_pem: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace,
                     "labels": {PART_OF.0: PART_OF.1}},
        "data": {"root-cert.pem": root_pem},
    });
    api.patch(
        ROOT_CONFIGMAP,
        &kube::api::PatchParams::apply("weft-controller").force(),
        &kube::api::Patch::Apply(cm),
    )
    .await
    .with_context(|| format!("publishing ConfigMap {namespace}/{ROOT_CONFIGMAP}"))?;
    info!(
        namespace,
        "mesh root published as ConfigMap {ROOT_CONFIGMAP}"
    );
    Ok(())
}

/// The ConfigMap agents read the mesh root from.
pub const ROOT_CONFIGMAP: &str = "weft-ca-root";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Severity;
    use serde_json::json;

    fn crd(name: &str, versions: &[&str], ours: bool) -> Value {
        let labels = if ours {
            json!({PART_OF.0: PART_OF.1})
        } else {
            json!({"app": "istio-pilot"})
        };
        json!({"metadata": {"name": name, "labels": labels},
               "spec": {"versions": versions.iter().map(|v| json!({"name": v, "served": true})).collect::<Vec<_>>()}})
    }

    #[test]
    fn foreign_crds_table() {
        let crds = vec![
            crd(
                "virtualservices.networking.istio.io",
                &["v1", "v1beta1"],
                true,
            ),
            crd(
                "destinationrules.networking.istio.io",
                &["v1", "v1beta1"],
                false,
            ),
            crd("gateways.networking.istio.io", &["v1alpha3"], false),
            crd("httproutes.gateway.networking.k8s.io", &["v1"], false),
        ];
        let f = crd_findings(&crds);
        let find = |needle: &str| f.iter().find(|(_, m)| m.contains(needle)).map(|(s, _)| *s);
        assert_eq!(find("virtualservices"), None, "ours: nothing to say");
        assert_eq!(find("destinationrules"), Some(Severity::Warning));
        assert_eq!(find("gateways.networking.istio.io"), Some(Severity::Error));
        assert_eq!(find("httproutes"), None, "Gateway API CRDs are upstream's");
        assert_eq!(find("grpcroutes"), Some(Severity::Info));
        assert_eq!(find("serviceentries"), Some(Severity::Info));
    }
}
