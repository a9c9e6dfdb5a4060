//! Typed parsing of mesh objects with field paths in error messages.
//!
//! serde_json's errors carry no path, only a line/column. So the object is re-rendered as JSON
//! with one value per line while recording each line's path; decoding that text turns the error's
//! line into a path (`spec.http[0].route[1].weight`). Fields neither Istio nor Gateway API define
//! are found by comparing the input with the re-serialized typed object (everything typed or
//! [`super::Opaque`] round-trips), and rejected as `kubectl apply`'s strict validation would.
use std::fmt::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    GATEWAY_API_GROUP, GRPCROUTE_VERSIONS, HTTPROUTE_VERSIONS, MeshResource, NETWORKING_GROUP,
    NETWORKING_VERSIONS, SECURITY_GROUP, SECURITY_VERSIONS,
};

/// Parses one decoded Kubernetes object.
///
/// - `None`: not a kind Weft reads (a Service, a Deployment, another `VirtualService` group, ...).
/// - `Some(Err(msg))`: a mesh kind that is malformed; `msg` starts with the field path
///   (`spec.http[0].route[0].weight: invalid type: string "x", expected i32`).
/// - `Some(Ok(resource))`: typed.
pub fn parse_resource(value: &Value) -> Option<Result<MeshResource, String>> {
    // `status` is written by controllers (Weft's own status conditions among them), never by users:
    // it is not part of what is validated.
    let stripped;
    let value = if value.get("status").is_some() {
        let mut v = value.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        stripped = v;
        &stripped
    } else {
        value
    };
    let api_version = value.get("apiVersion")?.as_str()?;
    let kind = value.get("kind")?.as_str()?;
    let (group, version) = api_version.split_once('/')?;

    let versions = match (group, kind) {
        (NETWORKING_GROUP, "VirtualService" | "DestinationRule" | "ServiceEntry" | "Gateway") => {
            NETWORKING_VERSIONS
        }
        (
            SECURITY_GROUP,
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication",
        ) => SECURITY_VERSIONS,
        (GATEWAY_API_GROUP, "HTTPRoute") => HTTPROUTE_VERSIONS,
        (GATEWAY_API_GROUP, "GRPCRoute") => GRPCROUTE_VERSIONS,
        _ => return None,
    };
    if !versions.contains(&version) {
        return Some(Err(format!(
            "apiVersion: {kind} is served as {} (got {api_version:?})",
            versions
                .iter()
                .map(|v| format!("{group}/{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    Some(match kind {
        "VirtualService" => typed(value).map(MeshResource::VirtualService),
        "DestinationRule" => typed(value).map(MeshResource::DestinationRule),
        "ServiceEntry" => typed(value).map(MeshResource::ServiceEntry),
        "Gateway" => typed(value).map(MeshResource::Gateway),
        "PeerAuthentication" => typed(value).map(MeshResource::PeerAuthentication),
        "AuthorizationPolicy" => typed(value).map(MeshResource::AuthorizationPolicy),
        "RequestAuthentication" => typed(value).map(MeshResource::RequestAuthentication),
        "HTTPRoute" => typed(value).map(MeshResource::HttpRoute),
        _ => typed(value).map(MeshResource::GrpcRoute),
    })
}

/// Decodes `value` as `T`, naming the field on error and rejecting unknown fields.
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    // `spec` is required by the generated types; Istio accepts an object without one (`{}`).
    let mut input = value.clone();
    if let Some(obj) = input.as_object_mut() {
        obj.entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        if obj.get("spec").is_some_and(Value::is_null) {
            obj.insert("spec".into(), Value::Object(Default::default()));
        }
    }

    let mut text = String::new();
    let mut paths = Vec::new();
    render(&input, "", "", &mut String::new(), &mut text, &mut paths);
    let parsed: T = serde_json::from_str(&text).map_err(|e| {
        let path = e
            .line()
            .checked_sub(1)
            .and_then(|i| paths.get(i))
            .map(String::as_str)
            .unwrap_or("");
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        if path.is_empty() {
            msg
        } else {
            format!("{path}: {msg}")
        }
    })?;

    let back = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    for key in ["spec"] {
        if let (Some(i), Some(o)) = (input.get(key), back.get(key)) {
            unknown_fields(i, o, key, &mut unknown);
        }
    }
    if let Some(obj) = input.as_object() {
        for (k, v) in obj {
            let known = matches!(
                k.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            );
            if !known && !is_empty_value(v) {
                unknown.push(k.clone());
            }
        }
    }
    if !unknown.is_empty() {
        return Err(unknown
            .iter()
            .map(|p| {
                let leaf = p.rsplit(['.', ']']).next().unwrap_or(p);
                format!("{p}: unknown field \"{leaf}\"")
            })
            .collect::<Vec<_>>()
            .join("; "));
    }
    Ok(parsed)
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Paths present in `input` but absent from the typed round trip `output`.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, iv) in i {
                let child = format!("{path}.{k}");
                match o.get(k) {
                    Some(ov) => unknown_fields(iv, ov, &child, out),
                    None if is_empty_value(iv) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Renders `v` as JSON with one value (or bracket) per line, pushing the JSON path of each line
/// to `paths` (index = line - 1). `prefix` is `"key":` inside objects; `suffix` is `,` if needed.
fn render(
    v: &Value,
    prefix: &str,
    suffix: &str,
    path: &mut String,
    text: &mut String,
    paths: &mut Vec<String>,
) {
    match v {
        Value::Object(map) => {
            let _ = writeln!(text, "{prefix}{{");
            paths.push(path.clone());
            let len = map.len();
            for (n, (k, child)) in map.iter().enumerate() {
                let saved = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let key = format!("{}:", Value::String(k.clone()));
                let sep = if n + 1 < len { "," } else { "" };
                render(child, &key, sep, path, text, paths);
                path.truncate(saved);
            }
            // Errors such as "missing field" are reported on the closing brace.
            let _ = writeln!(text, "}}{suffix}");
            paths.push(path.clone());
        }
        Value::Array(items) => {
            let _ = writeln!(text, "{prefix}[");
            paths.push(path.clone());
            let len = items.len();
            for (n, child) in items.iter().enumerate() {
                let saved = path.len();
                let _ = write!(path, "[{n}]");
                let sep = if n + 1 < len { "," } else { "" };
                render(child, "", sep, path, text, paths);
                path.truncate(saved);
            }
            let _ = writeln!(text, "]{suffix}");
            paths.push(path.clone());
        }
        scalar => {
            let _ = writeln!(text, "{prefix}{scalar}{suffix}");
            paths.push(path.clone());
        }
    }
}
