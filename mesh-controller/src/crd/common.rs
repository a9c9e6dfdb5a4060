//! Types shared by several Istio kinds: string matches, percentages, selectors, durations and the
//! opaque wrapper for fields Weft keeps but does not model.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A field Istio defines but Weft does not model in detail (yet). The value is kept verbatim, so
/// real Istio YAML applies unchanged and `analyze` can report the field as not supported.
///
/// Schema: `x-kubernetes-preserve-unknown-fields`, so the API server keeps it as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct Opaque(pub serde_json::Value);

impl JsonSchema for Opaque {
    fn schema_name() -> Cow<'static, str> {
        "Opaque".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// A Go/protobuf duration string as written in Istio YAML (`"1.5s"`, `"300ms"`, `"1h30m"`).
///
/// Kept as the original string so objects round-trip byte for byte; [`GoDuration::parse`] gives
/// the value. The CRD schema carries Istio's CEL rule (`duration(self) >= duration('1ms')`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct GoDuration(pub String);

/// Why a [`GoDuration`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a Go duration at all.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// Parses, but below Istio's 1ms floor (or negative).
    #[error("duration {0:?} must be at least 1ms")]
    TooSmall(String),
}

/// Parses a Go duration (`"1.5s"`, `"1h30m"`, `"0s"`); `None` if malformed or negative.
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let parsed: kube::core::Duration = s.trim().parse().ok()?;
    if parsed.is_negative() {
        return None;
    }
    Some(parsed.into())
}

impl GoDuration {
    /// The duration, if it is a Go duration of at least 1 ms (Istio's rule for every duration field).
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        let negative = self.0.trim().starts_with('-');
        let d = parse_go_duration(&self.0).ok_or_else(|| {
            if negative && self.0.trim()[1..].parse::<kube::core::Duration>().is_ok() {
                DurationError::TooSmall(self.0.clone())
            } else {
                DurationError::Invalid(self.0.clone())
            }
        })?;
        if d < std::time::Duration::from_millis(1) {
            return Err(DurationError::TooSmall(self.0.clone()));
        }
        Ok(d)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GoDuration {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "duration(self) >= duration('1ms')",
                "message": "must be a valid duration greater than 1ms"
            }]
        })
    }
}

/// Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2 syntax).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) <= 1",
    "message": "at most one of exact, prefix or regex can be set"
}]))]
pub struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl StringMatch {
    /// `{}`: in `headers`/`queryParams` this means "present"; elsewhere it matches anything.
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }

    /// How many of exact/prefix/regex are set (Istio requires at most one).
    pub fn set_count(&self) -> usize {
        [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|v| v.is_some())
            .count()
    }
}

/// Istio `Percent`: a double in [0, 100].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub value: f64,
}

/// Istio `WorkloadSelector` (`selector:` in the security kinds, `workloadSelector:` in a
/// DestinationRule).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// Istio `PolicyTargetReference` (`targetRef` / `targetRefs`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Istio `PortSelector`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
}
