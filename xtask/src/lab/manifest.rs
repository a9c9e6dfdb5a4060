//! Parsing and validating the Kubernetes YAML the lab accepts.
//!
//! Known kinds (Namespace, ServiceAccount, Pod, Deployment, Service) are deserialized strictly into
//! the k8s-openapi types: a field that is not in the Kubernetes schema is an error, as is a value of
//! the wrong type, and the lab's semantic checks mirror the API server's. Any other kind is kept as
//! is (the mesh controller reads it later) once it has `apiVersion`, `kind` and `metadata.name`.
//! Every error names the file, the document (1-based) and the field; a bad document is not applied.
use std::{collections::BTreeMap, fmt, path::Path};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, Namespace, Pod, PodSpec, Service, ServiceAccount},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::de::DeserializeOwned;

/// One validated document.
#[derive(Clone, Debug)]
pub struct Doc {
    pub file: String,
    pub index: usize,
    pub obj: Object,
}

#[derive(Clone, Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    /// Any other kind, stored for the mesh controller.
    Other {
        api_version: String,
        kind: String,
        value: serde_json::Value,
    },
}

/// Identity of an object in the lab's store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(
                f,
                "{}/{} (namespace {})",
                self.kind, self.name, self.namespace
            )
        }
    }
}

/// Kinds that are cluster-scoped (no namespace).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
];

impl Object {
    pub fn kind(&self) -> &str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Pod(_) => "Pod",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::Other { kind, .. } => kind,
        }
    }

    pub fn api_version(&self) -> &str {
        match self {
            Object::Deployment(_) => "apps/v1",
            Object::Other { api_version, .. } => api_version,
            _ => "v1",
        }
    }

    pub fn key(&self) -> ObjKey {
        let (ns, name) = match self {
            Object::Namespace(o) => (None, o.metadata.name.clone()),
            Object::ServiceAccount(o) => (o.metadata.namespace.clone(), o.metadata.name.clone()),
            Object::Pod(o) => (o.metadata.namespace.clone(), o.metadata.name.clone()),
            Object::Deployment(o) => (o.metadata.namespace.clone(), o.metadata.name.clone()),
            Object::Service(o) => (o.metadata.namespace.clone(), o.metadata.name.clone()),
            Object::Other { value, .. } => (
                value
                    .pointer("/metadata/namespace")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                value
                    .pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            ),
        };
        let kind = match self {
            Object::Other {
                api_version, kind, ..
            } => {
                // Group-qualified so e.g. Istio's and Gateway API's kinds never collide.
                match api_version.split_once('/') {
                    Some((group, _)) => format!("{kind}.{group}"),
                    None => kind.clone(),
                }
            }
            o => o.kind().to_string(),
        };
        let namespace = if CLUSTER_SCOPED.contains(&self.kind()) {
            String::new()
        } else {
            ns.unwrap_or_else(|| "default".into())
        };
        ObjKey {
            kind,
            namespace,
            name: name.unwrap_or_default(),
        }
    }

    /// The object as JSON, with the namespace defaulted (as the API server stores it).
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::ServiceAccount(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::Other { value, .. } => Ok(value.clone()),
        }
        .unwrap_or(serde_json::Value::Null);
        let key = self.key();
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut())
            && !key.namespace.is_empty()
        {
            m.insert("namespace".into(), key.namespace.into());
        }
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), self.api_version().into());
            m.insert("kind".into(), self.kind().into());
        }
        v
    }

    /// Re-reads an object stored by [`Object::to_value`].
    #[cfg(test)]
    pub fn from_value(v: &serde_json::Value) -> Result<Object, String> {
        parse_value(v).map_err(|e| e.to_string())
    }
}

/// A document that cannot be applied.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub file: String,
    pub index: usize,
    /// `Kind/name` when known.
    pub object: Option<String>,
    /// JSON-path-like field (`spec.ports[0].bogus`); empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.index)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An error inside one document, before the file/index are known.
#[derive(Debug)]
pub(crate) struct DocError {
    field: String,
    message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> DocError {
    DocError {
        field: field.into(),
        message: message.into(),
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// Reads every `.yaml`/`.yml`/`.json` file of `path` (a file, or a directory, not recursive,
/// sorted by name). Returns the good documents and the errors.
pub fn load_path(path: &Path) -> anyhow::Result<(Vec<Doc>, Vec<ManifestError>)> {
    let mut files = vec![];
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
                files.push(p);
            }
        }
        files.sort();
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let mut docs = vec![];
    let mut errors = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
        let (d, e) = parse_str(&f.display().to_string(), &text);
        docs.extend(d);
        errors.extend(e);
    }
    Ok((docs, errors))
}

/// Parses a multi-document YAML text.
pub fn parse_str(file: &str, text: &str) -> (Vec<Doc>, Vec<ManifestError>) {
    use serde::Deserialize as _;
    let mut docs = vec![];
    let mut errors = vec![];
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError {
                    file: file.into(),
                    index,
                    object: None,
                    field: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                // A syntax error ends the stream: later documents cannot be delimited reliably.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document (e.g. a trailing `---`)
        }
        let json: serde_json::Value = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(e) => {
                errors.push(ManifestError {
                    file: file.into(),
                    index,
                    object: None,
                    field: String::new(),
                    message: format!("not representable as JSON: {e}"),
                });
                continue;
            }
        };
        let object = describe(&json);
        match parse_value(&json) {
            Ok(obj) => docs.push(Doc {
                file: file.into(),
                index,
                obj,
            }),
            Err(e) => errors.push(ManifestError {
                file: file.into(),
                index,
                object,
                field: e.field,
                message: e.message,
            }),
        }
    }
    (docs, errors)
}

fn describe(v: &serde_json::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    Some(format!("{kind}/{name}"))
}

fn parse_value(v: &serde_json::Value) -> Result<Object, DocError> {
    let api_version = match v.get("apiVersion") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(err("apiVersion", "must be a non-empty string")),
        None => return Err(err("apiVersion", "Required value")),
    };
    let kind = match v.get("kind") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(err("kind", "must be a non-empty string")),
        None => return Err(err("kind", "Required value")),
    };
    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(Box::new(strict(v)?)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(Box::new(strict(v)?)),
        ("v1", "Pod") => Object::Pod(Box::new(strict(v)?)),
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(strict(v)?)),
        ("v1", "Service") => Object::Service(Box::new(strict(v)?)),
        (_, "Namespace" | "ServiceAccount" | "Pod" | "Service") if api_version != "v1" => {
            return Err(err(
                "apiVersion",
                format!("{kind} is served as `v1`, not `{api_version}`"),
            ));
        }
        (_, "Deployment") => {
            return Err(err(
                "apiVersion",
                format!("Deployment is served as `apps/v1`, not `{api_version}`"),
            ));
        }
        _ => {
            match v.pointer("/metadata/name") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {}
                _ => return Err(err("metadata.name", "Required value")),
            }
            Object::Other {
                api_version,
                kind,
                value: v.clone(),
            }
        }
    };
    validate(&obj)?;
    Ok(obj)
}

/// Deserializes with path tracking; any field outside the schema is an error.
pub(crate) fn strict<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, DocError> {
    let mut unknown: Vec<String> = vec![];
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(v, &mut track);
    let res: Result<T, _> =
        serde_ignored::deserialize(de, |p| unknown.push(clean_path(&p.to_string())));
    match res {
        Err(e) => {
            let path = track.path().to_string();
            let msg = e.to_string();
            let msg = msg
                .strip_prefix(&format!("{path}: "))
                .unwrap_or(&msg)
                .to_string();
            Err(err(if path == "." { String::new() } else { path }, msg))
        }
        Ok(_) if !unknown.is_empty() => Err(err(
            unknown[0].clone(),
            "unknown field (not in the Kubernetes schema)",
        )),
        Ok(t) => Ok(t),
    }
}

/// `spec.?.ports.?.0.bogus` (serde_ignored) → `spec.ports[0].bogus`.
fn clean_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('.').filter(|s| *s != "?" && !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    label: bool,
) -> Result<(), DocError> {
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(err("metadata.name", "Required value"));
    }
    let ok = if label {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !ok {
        return Err(err(
            "metadata.name",
            format!(
                "Invalid value {name:?}: must be a lowercase RFC 1123 {}",
                if label { "label" } else { "subdomain" }
            ),
        ));
    }
    if let Some(ns) = &meta.namespace
        && !is_dns_label(ns)
    {
        return Err(err(
            "metadata.namespace",
            format!("Invalid value {ns:?}: must be a lowercase RFC 1123 label"),
        ));
    }
    Ok(())
}

fn validate(obj: &Object) -> Result<(), DocError> {
    match obj {
        Object::Namespace(o) => check_name(&o.metadata, true),
        Object::ServiceAccount(o) => check_name(&o.metadata, false),
        Object::Pod(o) => {
            check_name(&o.metadata, false)?;
            let spec = o
                .spec
                .as_ref()
                .ok_or_else(|| err("spec", "Required value"))?;
            validate_pod_spec(spec, "spec")
        }
        Object::Deployment(o) => {
            check_name(&o.metadata, false)?;
            let spec = o
                .spec
                .as_ref()
                .ok_or_else(|| err("spec", "Required value"))?;
            if spec.replicas.is_some_and(|r| r < 0) {
                return Err(err("spec.replicas", "must be greater than or equal to 0"));
            }
            let sel = &spec.selector;
            if sel
                .match_expressions
                .as_ref()
                .is_some_and(|e| !e.is_empty())
            {
                return Err(err(
                    "spec.selector.matchExpressions",
                    "not supported by the lab (use matchLabels)",
                ));
            }
            let match_labels = sel.match_labels.clone().unwrap_or_default();
            if match_labels.is_empty() {
                return Err(err(
                    "spec.selector",
                    "Required value: a Deployment needs a non-empty selector",
                ));
            }
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !selector_matches(&match_labels, &labels) {
                return Err(err(
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                ));
            }
            let pspec = spec
                .template
                .spec
                .as_ref()
                .ok_or_else(|| err("spec.template.spec", "Required value"))?;
            validate_pod_spec(pspec, "spec.template.spec")
        }
        Object::Service(o) => {
            check_name(&o.metadata, true)?;
            let spec = o
                .spec
                .as_ref()
                .ok_or_else(|| err("spec", "Required value"))?;
            let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
            if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
                return Err(err(
                    "spec.type",
                    format!("Unsupported value {ty:?} (the lab supports ClusterIP)"),
                ));
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if let Some(ip) = spec.cluster_ip.as_deref()
                && !headless
                && !ip.is_empty()
            {
                let parsed: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                    err(
                        "spec.clusterIP",
                        format!("Invalid value {ip:?}: not an IPv4 address"),
                    )
                })?;
                if parsed.octets()[0..2] != [10, 96] {
                    return Err(err(
                        "spec.clusterIP",
                        format!(
                            "Invalid value {ip:?}: not in the lab's service range 10.96.0.0/16"
                        ),
                    ));
                }
            }
            let ports = spec.ports.as_deref().unwrap_or(&[]);
            if ports.is_empty() && !headless {
                return Err(err("spec.ports", "Required value"));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, p) in ports.iter().enumerate() {
                if !(1..=65535).contains(&p.port) {
                    return Err(err(
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value {}: must be between 1 and 65535", p.port),
                    ));
                }
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                if !matches!(proto, "TCP" | "UDP") {
                    return Err(err(
                        format!("spec.ports[{i}].protocol"),
                        format!("Unsupported value {proto:?}: TCP or UDP"),
                    ));
                }
                if ports.len() > 1 && p.name.as_deref().unwrap_or("").is_empty() {
                    return Err(err(
                        format!("spec.ports[{i}].name"),
                        "Required value: ports of a multi-port Service need names",
                    ));
                }
                if !names.insert(p.name.clone().unwrap_or_default()) {
                    return Err(err(format!("spec.ports[{i}].name"), "Duplicate value"));
                }
                match &p.target_port {
                    Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                        return Err(err(
                            format!("spec.ports[{i}].targetPort"),
                            format!("Invalid value {t}: must be between 1 and 65535"),
                        ));
                    }
                    Some(IntOrString::String(s)) if !is_dns_label(s) => {
                        return Err(err(
                            format!("spec.ports[{i}].targetPort"),
                            format!(
                                "Invalid value {s:?}: must be a port number or an IANA_SVC_NAME"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Object::Other { .. } => Ok(()),
    }
}

fn validate_pod_spec(spec: &PodSpec, at: &str) -> Result<(), DocError> {
    if spec.containers.is_empty() {
        return Err(err(format!("{at}.containers"), "Required value"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let f = format!("{at}.containers[{i}]");
        validate_container(c, &f)?;
        if !names.insert(c.name.clone()) {
            return Err(err(
                format!("{f}.name"),
                format!("Duplicate value {:?}", c.name),
            ));
        }
    }
    if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(err(
            format!("{at}.initContainers"),
            "not supported by the lab",
        ));
    }
    Ok(())
}

fn validate_container(c: &Container, f: &str) -> Result<(), DocError> {
    if !is_dns_label(&c.name) {
        return Err(err(
            format!("{f}.name"),
            format!(
                "Invalid value {:?}: must be a lowercase RFC 1123 label",
                c.name
            ),
        ));
    }
    if c.command.as_ref().is_none_or(|v| v.is_empty()) {
        return Err(err(
            format!("{f}.command"),
            "Required value in the lab: it ignores `image:` and runs `command`/`args` on the host (e.g. [\"mesh-echo\", \"--http-port\", \"8080\"])",
        ));
    }
    for (j, p) in c.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return Err(err(
                format!("{f}.ports[{j}].containerPort"),
                format!(
                    "Invalid value {}: must be between 1 and 65535",
                    p.container_port
                ),
            ));
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        if let Some(from) = &e.value_from {
            let field = from.field_ref.as_ref().map(|r| r.field_path.as_str());
            if !matches!(
                field,
                Some(
                    "metadata.name"
                        | "metadata.namespace"
                        | "status.podIP"
                        | "spec.nodeName"
                        | "spec.serviceAccountName"
                )
            ) {
                return Err(err(
                    format!("{f}.env[{j}].valueFrom"),
                    "not supported by the lab (only fieldRef metadata.name, metadata.namespace, status.podIP, spec.nodeName, spec.serviceAccountName)",
                ));
            }
        }
    }
    Ok(())
}

/// Equality-based label selector match.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Object, String> {
        let (mut docs, errs) = parse_str("t.yaml", text);
        if let Some(e) = errs.into_iter().next() {
            return Err(e.to_string());
        }
        Ok(docs.remove(0).obj)
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            (
                "service ok",
                "apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: demo}\nspec:\n  selector: {app: b}\n  ports: [{port: 8080, targetPort: 8080}]\n",
                Ok("Service/backend (namespace demo)"),
            ),
            (
                "unknown field in a service port",
                "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: 80\n    bogus: 1\n",
                Err("t.yaml: document 1 (Service/b): field `spec.ports[0].bogus`: unknown field"),
            ),
            (
                "deployment without selector",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, command: [sleep, '1']}]}\n",
                Err("t.yaml: document 1 (Deployment/d): field `spec.selector`: Required value"),
            ),
            (
                "selector does not match",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, command: [sleep, '1']}]}\n",
                Err("field `spec.template.metadata.labels`: Invalid value"),
            ),
            (
                "wrong type",
                "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: eighty\n",
                Err("field `spec.ports[0].port`: invalid type"),
            ),
            (
                "container without command",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: nginx}]}\n",
                Err("field `spec.containers[0].command`: Required value in the lab"),
            ),
            (
                "other kinds are stored",
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: demo}\nspec: {hosts: [backend]}\n",
                Ok("VirtualService.networking.istio.io/vs (namespace demo)"),
            ),
            (
                "other kinds need a name",
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {}\n",
                Err("field `metadata.name`: Required value"),
            ),
            (
                "no kind",
                "apiVersion: v1\nmetadata: {name: x}\n",
                Err("field `kind`: Required value"),
            ),
            (
                "bad yaml",
                "apiVersion: v1\nkind: [\n",
                Err("t.yaml: document 1: invalid YAML"),
            ),
            (
                "bad name",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: Demo_1}\n",
                Err("field `metadata.name`: Invalid value"),
            ),
        ];
        for (name, text, want) in cases {
            let got = one(text).map(|o| o.key().to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{name}"),
                (Err(w), Err(g)) => {
                    assert!(g.contains(w), "{name}: error {g:?} does not contain {w:?}")
                }
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// Every manifest the repository ships for the lab (examples, test fixtures) is accepted.
    #[test]
    fn shipped_manifests_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let mut seen = 0;
        for dir in [
            "examples",
            "examples/mesh",
            "examples/traffic",
            "xtask/tests/fixtures",
        ] {
            let (docs, errors) = load_path(&root.join(dir)).unwrap();
            assert!(errors.is_empty(), "{dir}: {errors:?}");
            seen += docs.len();
        }
        assert!(seen > 40, "{seen} documents");
    }

    #[test]
    fn a_bad_document_does_not_hide_good_ones() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n";
        let (docs, errs) = parse_str("m.yaml", text);
        assert_eq!(docs.len(), 2);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].index, 2);
        assert_eq!(errs[0].field, "spec.ports[0].port");
    }

    #[test]
    fn stored_objects_round_trip() {
        let o = one("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, command: [sleep, infinity]}]}\n").unwrap();
        let v = o.to_value();
        assert_eq!(v["metadata"]["namespace"], "default");
        let back = Object::from_value(&v).unwrap();
        assert_eq!(back.key(), o.key());
    }
}
