//! Kube mode: validation results become status on the objects users applied (server-side apply,
//! field manager `weft-controller`), so `kubectl get vs reviews -o yaml` says what Weft accepted.
//!
//! - Istio kinds: `status.conditions[type=Accepted]` plus Istio's `status.validationMessages`
//!   (`{type: {code}, level, message}`), with `observedGeneration`.
//! - Gateway API routes: one `status.parents[]` entry per Service parent with
//!   `controllerName: weft.dev/mesh-controller` and the `Accepted` / `ResolvedRefs` conditions.
//!
//! [`statuses`] is pure (table-tested); [`StatusWriter`] patches only what changed.
use std::collections::BTreeMap;

use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::{
    model::Model,
    sources::kube::WATCHED,
    validate::{Diagnostic, Severity, codes},
};

/// `controllerName` in Gateway API route status.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh-controller";
const FIELD_MANAGER: &str = "weft-controller";

/// The kinds that get a status (the mesh resources users apply).
fn has_status(kind: &str) -> bool {
    WATCHED
        .iter()
        .any(|w| w.kind == kind && w.group.contains('.') && w.group != "discovery.k8s.io")
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &str,
) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    })
}

/// The status every mesh object should have, by `Kind namespace/name`. `now` is the
/// `lastTransitionTime` written (callers compare statuses without it).
pub fn statuses(model: &Model, diags: &[Diagnostic], now: &str) -> BTreeMap<String, Value> {
    let mut by_object: BTreeMap<&str, Vec<&Diagnostic>> = BTreeMap::new();
    for d in diags {
        by_object.entry(d.object.as_str()).or_default().push(d);
    }
    let mut out = BTreeMap::new();
    for (kind, objs) in model.objects.iter().filter(|(k, _)| has_status(k)) {
        for (key, obj) in objs {
            let id = format!("{kind} {key}");
            let found = by_object.get(id.as_str()).cloned().unwrap_or_default();
            let generation = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let errors: Vec<&&Diagnostic> = found
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            let message = |ds: &[&&Diagnostic]| {
                ds.iter()
                    .map(|d| {
                        if d.field.is_empty() {
                            format!("[{}] {}", d.code, d.message)
                        } else {
                            format!("[{}] {}: {}", d.code, d.field, d.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let status = if kind == "HTTPRoute" || kind == "GRPCRoute" {
                let (refs, other): (Vec<_>, Vec<_>) =
                    errors.iter().partition(|d| d.code == codes::NOT_FOUND);
                let parents: Vec<Value> = obj
                    .pointer("/spec/parentRefs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("kind").and_then(Value::as_str) == Some("Service"))
                    .map(|p| {
                        json!({
                            "parentRef": p,
                            "controllerName": CONTROLLER_NAME,
                            "conditions": [
                                if other.is_empty() {
                                    condition("Accepted", true, "Accepted", "", generation, now)
                                } else {
                                    condition("Accepted", false, "UnsupportedValue", &message(&other), generation, now)
                                },
                                if refs.is_empty() {
                                    condition("ResolvedRefs", true, "ResolvedRefs", "", generation, now)
                                } else {
                                    condition("ResolvedRefs", false, "BackendNotFound", &message(&refs), generation, now)
                                },
                            ],
                        })
                    })
                    .collect();
                json!({ "parents": parents })
            } else {
                let accepted = if errors.is_empty() {
                    condition("Accepted", true, "Accepted", "", generation, now)
                } else {
                    condition(
                        "Accepted",
                        false,
                        "Invalid",
                        &message(&errors),
                        generation,
                        now,
                    )
                };
                let messages: Vec<Value> = found
                    .iter()
                    .map(|d| {
                        json!({
                            "type": {"code": d.code},
                            "level": match d.severity {
                                Severity::Error => "ERROR",
                                Severity::Warning => "WARNING",
                                Severity::Info => "INFO",
                            },
                            "message": if d.field.is_empty() { d.message.clone() } else { format!("{}: {}", d.field, d.message) },
                        })
                    })
                    .collect();
                json!({
                    "observedGeneration": generation,
                    "conditions": [accepted],
                    "validationMessages": messages,
                })
            };
            out.insert(id, status);
        }
    }
    out
}

/// Removes the timestamps so statuses can be compared across writes.
fn without_time(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.remove("lastTransitionTime");
            for x in m.values_mut() {
                *x = without_time(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = without_time(x.take());
            }
        }
        _ => {}
    }
    v
}

/// Writes statuses to the API server, only for objects whose status changed.
pub struct StatusWriter {
    client: Client,
    /// Last written status (without timestamps) by `Kind namespace/name`.
    written: BTreeMap<String, Value>,
}

impl StatusWriter {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: BTreeMap::new(),
        }
    }

    pub async fn write(&mut self, model: &Model) {
        let diags = crate::validate::validate_model(model);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let want = statuses(model, &diags, &now);
        self.written.retain(|k, _| want.contains_key(k));
        for (id, status) in want {
            let bare = without_time(status.clone());
            if self.written.get(&id) == Some(&bare) {
                continue;
            }
            match self.patch(&id, status).await {
                Ok(()) => {
                    debug!(object = id, "status written");
                    self.written.insert(id, bare);
                }
                Err(e) => warn!(object = id, "writing status: {e}"),
            }
        }
    }

    async fn patch(&self, id: &str, status: Value) -> Result<(), kube::Error> {
        let Some((kind, key)) = id.split_once(' ') else {
            return Ok(());
        };
        let Some(w) = WATCHED.iter().find(|w| w.kind == kind) else {
            return Ok(());
        };
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &w.api_resource());
        let body = json!({"apiVersion": w.api_version(), "kind": w.kind, "status": status});
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut m = Model::default();
        for v in [
            json!({"kind": "VirtualService", "apiVersion": "networking.istio.io/v1",
                   "metadata": {"name": "good", "namespace": "demo", "generation": 3},
                   "spec": {"hosts": ["b"], "http": [{"route": [{"destination": {"host": "b"}}]}]}}),
            json!({"kind": "VirtualService", "apiVersion": "networking.istio.io/v1",
                   "metadata": {"name": "bad", "namespace": "demo", "generation": 1},
                   "spec": {"hosts": ["b"]}}),
            json!({"kind": "HTTPRoute", "apiVersion": "gateway.networking.k8s.io/v1",
                   "metadata": {"name": "r", "namespace": "demo", "generation": 2},
                   "spec": {"parentRefs": [{"kind": "Service", "name": "b"}]}}),
            json!({"kind": "Service", "metadata": {"name": "b", "namespace": "demo"}}),
        ] {
            m.insert(v);
        }
        m
    }

    fn diag(code: &'static str, severity: Severity, object: &str) -> Diagnostic {
        Diagnostic {
            code,
            severity,
            object: object.into(),
            field: "spec.x".into(),
            message: "broken".into(),
        }
    }

    #[test]
    fn status_table() {
        let diags = vec![
            diag(codes::SCHEMA, Severity::Error, "VirtualService demo/bad"),
            diag(codes::NOT_FOUND, Severity::Error, "HTTPRoute demo/r"),
            diag(
                codes::NOT_FOUND,
                Severity::Warning,
                "VirtualService demo/good",
            ),
        ];
        let s = statuses(&model(), &diags, "t");
        assert_eq!(s.len(), 3, "Services get no status: {s:?}");
        let good = &s["VirtualService demo/good"];
        assert_eq!(good["conditions"][0]["status"], "True");
        assert_eq!(good["observedGeneration"], 3);
        assert_eq!(good["validationMessages"][0]["level"], "WARNING");
        let bad = &s["VirtualService demo/bad"];
        assert_eq!(bad["conditions"][0]["status"], "False");
        assert_eq!(bad["conditions"][0]["reason"], "Invalid");
        assert!(
            bad["conditions"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.x: broken"))
        );
        let r = &s["HTTPRoute demo/r"]["parents"][0];
        assert_eq!(r["controllerName"], CONTROLLER_NAME);
        assert_eq!(r["conditions"][0]["status"], "True");
        assert_eq!(r["conditions"][1]["reason"], "BackendNotFound");
        assert_eq!(r["conditions"][1]["observedGeneration"], 2);
        // Timestamps do not count as a change.
        let again = statuses(&model(), &diags, "t2");
        assert_eq!(
            without_time(again["HTTPRoute demo/r"].clone()),
            without_time(s["HTTPRoute demo/r"].clone())
        );
    }
}
