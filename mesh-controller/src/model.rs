//! The controller's in-memory model of the cluster: the Kubernetes objects the mesh needs, whatever
//! source they came from (a directory of YAML or the Kubernetes API).
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::Value;

/// Objects by kind then `namespace/name` (cluster-scoped: `name`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ip: Option<Ipv4Addr>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub running: bool,
    /// Container ports by name (for named targetPorts).
    pub named_ports: BTreeMap<String, u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SvcPort {
    pub name: String,
    pub port: u16,
    /// Number, or a container port name.
    pub target: Result<u16, String>,
    pub protocol: String,
    pub app_protocol: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<SvcPort>,
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn s(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).and_then(Value::as_str).map(str::to_string)
}

impl Model {
    pub fn insert(&mut self, v: Value) {
        if let Some((kind, key)) = key_of(&v) {
            self.objects.entry(kind).or_default().insert(key, v);
        }
    }

    pub fn of(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.get(kind).into_iter().flat_map(|m| m.values())
    }

    pub fn namespace_annotations(&self, ns: &str) -> BTreeMap<String, String> {
        self.objects
            .get("Namespace")
            .and_then(|m| m.get(ns))
            .map(|v| str_map(v.pointer("/metadata/annotations")))
            .unwrap_or_default()
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.of("Pod")
            .filter_map(|p| {
                let named_ports = p
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|c| {
                        c.get("ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                    })
                    .filter_map(|cp| {
                        Some((
                            cp.get("name")?.as_str()?.to_string(),
                            cp.get("containerPort")?.as_u64()? as u16,
                        ))
                    })
                    .collect();
                Some(Pod {
                    uid: s(p, "/metadata/uid")?,
                    name: s(p, "/metadata/name")?,
                    namespace: s(p, "/metadata/namespace").unwrap_or_else(|| "default".into()),
                    node: s(p, "/spec/nodeName").unwrap_or_default(),
                    ip: s(p, "/status/podIP").and_then(|ip| ip.parse().ok()),
                    service_account: s(p, "/spec/serviceAccountName")
                        .unwrap_or_else(|| "default".into()),
                    labels: str_map(p.pointer("/metadata/labels")),
                    annotations: str_map(p.pointer("/metadata/annotations")),
                    running: s(p, "/status/phase").as_deref() == Some("Running"),
                    named_ports,
                })
            })
            .collect()
    }

    pub fn services(&self) -> Vec<Service> {
        self.of("Service")
            .filter_map(|v| {
                let ports = v
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let port = p.get("port")?.as_u64()? as u16;
                        let target = match p.get("targetPort") {
                            Some(Value::Number(n)) => {
                                Ok(n.as_u64().unwrap_or(u64::from(port)) as u16)
                            }
                            Some(Value::String(name)) => Err(name.clone()),
                            _ => Ok(port),
                        };
                        Some(SvcPort {
                            name: p.get("name").and_then(Value::as_str).unwrap_or("").into(),
                            port,
                            target,
                            protocol: p
                                .get("protocol")
                                .and_then(Value::as_str)
                                .unwrap_or("TCP")
                                .into(),
                            app_protocol: p
                                .get("appProtocol")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .into(),
                        })
                    })
                    .collect();
                Some(Service {
                    name: s(v, "/metadata/name")?,
                    namespace: s(v, "/metadata/namespace").unwrap_or_else(|| "default".into()),
                    cluster_ip: s(v, "/spec/clusterIP").and_then(|ip| ip.parse().ok()),
                    selector: str_map(v.pointer("/spec/selector")),
                    ports,
                })
            })
            .collect()
    }
}

/// The key an object is stored under in its kind: `namespace/name`, or `name` for cluster-scoped
/// kinds. `None` when the object has no kind or name.
pub fn key_of(v: &Value) -> Option<(String, String)> {
    let (kind, name) = (s(v, "/kind")?, s(v, "/metadata/name")?);
    let key = match s(v, "/metadata/namespace") {
        Some(ns) if kind != "Namespace" && kind != "Node" => format!("{ns}/{name}"),
        _ => name,
    };
    Some((kind, key))
}

/// The live model shared by the source that writes it, the translation loop and the CA (which must
/// see a new pod at once, without waiting for the debounce). Every change bumps a generation the
/// translation loop waits on.
pub struct Store {
    model: std::sync::RwLock<Model>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Store {
    pub fn new(model: Model) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            model: std::sync::RwLock::new(model),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Waits for changes with [`tokio::sync::watch::Receiver::changed`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.model.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> Model {
        self.read(Model::clone)
    }

    fn write(&self, f: impl FnOnce(&mut Model) -> bool) {
        let changed = f(&mut self.model.write().unwrap_or_else(|p| p.into_inner()));
        if changed {
            self.changes.send_modify(|g| *g += 1);
        }
    }

    /// Replaces everything (the files source).
    pub fn replace(&self, model: Model) {
        self.write(|m| {
            let changed = *m != model;
            *m = model;
            changed
        });
    }

    /// Replaces every object of one kind (a watcher's (re)list).
    pub fn replace_kind(&self, kind: &str, objects: BTreeMap<String, Value>) {
        self.write(|m| {
            let old = m.objects.remove(kind).unwrap_or_default();
            let changed = old != objects;
            if !objects.is_empty() {
                m.objects.insert(kind.to_string(), objects);
            }
            changed
        });
    }

    pub fn apply(&self, v: Value) {
        self.write(|m| {
            let Some((kind, key)) = key_of(&v) else {
                return false;
            };
            let slot = m.objects.entry(kind).or_default();
            if slot.get(&key) == Some(&v) {
                return false;
            }
            slot.insert(key, v);
            true
        });
    }

    pub fn delete(&self, kind: &str, key: &str) {
        self.write(|m| {
            m.objects
                .get_mut(kind)
                .is_some_and(|objs| objs.remove(key).is_some())
        });
    }
}
