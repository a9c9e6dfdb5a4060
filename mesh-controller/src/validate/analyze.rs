//! `mesh-controller analyze`: validate a directory of YAML offline.
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::Value;

use super::{ClusterView, Diagnostic, Severity, codes, validate};
use crate::crd::parse_resource;

/// Reads every `.yaml`/`.yml` file directly in `dir` (sorted by name; multi-document), builds a
/// [`ClusterView`] from the Services, Pods and workload templates found there, parses the mesh
/// resources and validates them.
///
/// Returns the diagnostics (unreadable documents and parse errors first, as Errors naming file,
/// document and field) and the number of objects read. Fails only if `dir` cannot be listed.
pub fn analyze_dir(dir: &Path) -> anyhow::Result<(Vec<Diagnostic>, usize)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "yaml" || e == "yml")
        })
        .collect();
    files.sort();

    let mut diagnostics = Vec::new();
    let mut cluster = ClusterView::default();
    let mut resources = Vec::new();
    let mut objects = 0;
    for path in files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diagnostics.push(unreadable(&file, 0, e.to_string()));
                continue;
            }
        };
        for (n, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc_no = n + 1;
            let value = match Value::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    diagnostics.push(unreadable(&file, doc_no, e.to_string()));
                    // A syntax error leaves the stream unusable past this point.
                    break;
                }
            };
            if !value.is_object() {
                continue;
            }
            objects += 1;
            if cluster.add_object(&value) {
                continue;
            }
            match parse_resource(&value) {
                None => {}
                Some(Ok(r)) => resources.push(r),
                Some(Err(msg)) => diagnostics.push(parse_error(&value, &file, doc_no, &msg)),
            }
        }
    }
    diagnostics.extend(validate(&resources, &cluster));
    Ok((diagnostics, objects))
}

fn unreadable(file: &str, doc: usize, err: String) -> Diagnostic {
    let place = if doc == 0 {
        file.to_string()
    } else {
        format!("{file} document {doc}")
    };
    Diagnostic {
        code: codes::UNREADABLE,
        severity: Severity::Error,
        object: place,
        field: String::new(),
        message: format!("cannot read YAML: {err}"),
    }
}

/// A parse error as `Error [IST0106] (VirtualService ns/name) spec.x: msg (file.yaml, document 2)`.
fn parse_error(value: &Value, file: &str, doc: usize, msg: &str) -> Diagnostic {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = value.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let object = format!(
        "{kind} {}/{}",
        get("namespace").unwrap_or("default"),
        get("name").unwrap_or("")
    );
    // Messages are `path: detail`, several joined with "; " for unknown fields.
    let (field, detail) = match msg.split_once(": ") {
        Some((f, d)) if !f.contains(' ') => (f.to_string(), d.to_string()),
        _ => (String::new(), msg.to_string()),
    };
    Diagnostic {
        code: codes::SCHEMA,
        severity: Severity::Error,
        object,
        field,
        message: format!("{detail} ({file}, document {doc})"),
    }
}
