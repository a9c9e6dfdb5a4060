//! CORS for a route, as Envoy's CORS filter applies Istio's `corsPolicy` and the Gateway API
//! `CORS` filter (the controller passes either verbatim as JSON).
//!
//! - A request without `Origin` is not a CORS request: nothing happens.
//! - An origin is allowed when one of `allowOrigins` matches it — Istio string matches
//!   (`exact`/`prefix`/`regex`, RE2 full match), the deprecated `allowOrigin` strings (exact), or
//!   Gateway API strings with `*` wildcards (`*`, `https://*.example.com`). As in Envoy, a matcher
//!   that matches the literal `*` allows every origin.
//! - **Preflight** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the proxy (200) with `access-control-allow-origin: <origin>`,
//!   `-allow-methods`, `-allow-headers`, `-max-age`, `-allow-credentials: true` as configured; it
//!   never reaches the app. From another origin it is forwarded to the app (Istio's default
//!   `unmatchedPreflights: FORWARD`) or answered 200 without CORS headers (`IGNORE`).
//! - **Actual requests** from an allowed origin go to the app; its response gets
//!   `access-control-allow-origin: <origin>`, `-allow-credentials` and `-expose-headers`. Other
//!   origins get no CORS headers (the browser then blocks the response).
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::Deserialize;

/// A route's CORS policy that cannot be used (the route table is refused with this message).
#[derive(Debug, thiserror::Error)]
pub enum CorsError {
    #[error("corsPolicy: {0}")]
    Json(#[from] serde_json::Error),
    #[error("corsPolicy: allowOrigins[{index}]: invalid regex {pattern:?}: {source}")]
    Regex {
        index: usize,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("corsPolicy: maxAge: {0:?} is not a duration (e.g. \"24h\") or a number of seconds")]
    MaxAge(String),
    #[error("corsPolicy: {field}: {value:?} is not a valid header value")]
    Header { field: &'static str, value: String },
}

/// The JSON as either API writes it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    allow_origins: Vec<OriginSpec>,
    /// Istio's deprecated form: exact strings.
    allow_origin: Vec<String>,
    allow_methods: Vec<String>,
    allow_headers: Vec<String>,
    expose_headers: Vec<String>,
    /// Istio: a duration string; Gateway API: seconds.
    max_age: Option<serde_json::Value>,
    /// Istio: a bool (or `{value: bool}` in older protos); Gateway API: a bool.
    allow_credentials: Option<serde_json::Value>,
    /// Istio: `FORWARD` (default) or `IGNORE`.
    unmatched_preflights: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OriginSpec {
    /// Gateway API: a string, `*` wildcards allowed.
    Wildcard(String),
    /// Istio StringMatch.
    Match {
        exact: Option<String>,
        prefix: Option<String>,
        regex: Option<String>,
    },
}

#[derive(Debug)]
enum Origin {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Origin {
    fn matches(&self, s: &str) -> bool {
        match self {
            Origin::Exact(e) => e == s,
            Origin::Prefix(p) => s.starts_with(p.as_str()),
            Origin::Regex(r) => r.is_match(s),
        }
    }
}

/// A compiled CORS policy.
#[derive(Debug)]
pub struct CorsPolicy {
    origins: Vec<Origin>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    forward_unmatched_preflights: bool,
}

/// What the proxy does with a request under a CORS policy.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a CORS request, or one from an origin not allowed: route it as usual, add nothing.
    Pass,
    /// Answer the preflight here: 200 with these headers (none for an ignored preflight).
    Respond(Vec<(HeaderName, HeaderValue)>),
    /// Route it as usual; add these headers to the response.
    Forward(Vec<(HeaderName, HeaderValue)>),
}

fn list(field: &'static str, v: &[String]) -> Result<Option<HeaderValue>, CorsError> {
    if v.is_empty() {
        return Ok(None);
    }
    let joined = v.join(",");
    HeaderValue::from_str(&joined)
        .map(Some)
        .map_err(|_| CorsError::Header {
            field,
            value: joined,
        })
}

fn max_age(v: &serde_json::Value) -> Result<HeaderValue, CorsError> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => humantime::parse_duration(s)
            .ok()
            .map(|d: Duration| d.as_secs()),
        _ => None,
    };
    secs.map(HeaderValue::from)
        .ok_or_else(|| CorsError::MaxAge(v.to_string()))
}

fn wildcard(index: usize, pattern: &str) -> Result<Origin, CorsError> {
    if !pattern.contains('*') || pattern == "*" {
        return Ok(Origin::Exact(pattern.to_string()));
    }
    let re = pattern
        .split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*");
    Regex::new(&format!("^(?:{re})$"))
        .map(Origin::Regex)
        .map_err(|e| CorsError::Regex {
            index,
            pattern: pattern.to_string(),
            source: Box::new(e),
        })
}

impl CorsPolicy {
    /// Compiles the JSON the controller sent (`""` is no policy: `None`).
    pub fn parse(json: &str) -> Result<Option<CorsPolicy>, CorsError> {
        if json.trim().is_empty() {
            return Ok(None);
        }
        let spec: Spec = serde_json::from_str(json)?;
        let mut origins = Vec::new();
        for (index, o) in spec.allow_origins.iter().enumerate() {
            origins.push(match o {
                OriginSpec::Wildcard(s) => wildcard(index, s)?,
                OriginSpec::Match { exact: Some(e), .. } => Origin::Exact(e.clone()),
                OriginSpec::Match {
                    prefix: Some(p), ..
                } => Origin::Prefix(p.clone()),
                OriginSpec::Match { regex: Some(r), .. } => Regex::new(&format!("^(?:{r})$"))
                    .map(Origin::Regex)
                    .map_err(|e| CorsError::Regex {
                        index,
                        pattern: r.clone(),
                        source: Box::new(e),
                    })?,
                // An empty StringMatch matches nothing (Envoy rejects it; Istio's validation too).
                OriginSpec::Match { .. } => continue,
            });
        }
        origins.extend(spec.allow_origin.iter().cloned().map(Origin::Exact));
        let allow_credentials = match &spec.allow_credentials {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::Object(o)) => o.get("value") == Some(&true.into()),
            _ => false,
        };
        Ok(Some(CorsPolicy {
            origins,
            allow_methods: list("allowMethods", &spec.allow_methods)?,
            allow_headers: list("allowHeaders", &spec.allow_headers)?,
            expose_headers: list("exposeHeaders", &spec.expose_headers)?,
            max_age: spec.max_age.as_ref().map(max_age).transpose()?,
            allow_credentials,
            forward_unmatched_preflights: !spec
                .unmatched_preflights
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case("IGNORE")),
        }))
    }

    fn allowed(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.matches("*") || o.matches(origin))
    }

    /// The decision for one request (method and headers as received).
    pub fn evaluate(&self, method: &Method, headers: &HeaderMap) -> Decision {
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            return Decision::Pass;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allowed(o));
        let preflight = method == Method::OPTIONS
            && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        use http::header as h;
        let mut out = vec![];
        match (preflight, allowed) {
            (true, false) if self.forward_unmatched_preflights => Decision::Pass,
            (true, false) => Decision::Respond(out),
            (false, false) => Decision::Pass,
            (true, true) => {
                out.push((h::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
                if self.allow_credentials {
                    out.push((
                        h::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    ));
                }
                for (name, v) in [
                    (h::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
                    (h::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
                    (h::ACCESS_CONTROL_MAX_AGE, &self.max_age),
                ] {
                    if let Some(v) = v {
                        out.push((name, v.clone()));
                    }
                }
                Decision::Respond(out)
            }
            (false, true) => {
                out.push((h::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
                if self.allow_credentials {
                    out.push((
                        h::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    ));
                }
                if let Some(v) = &self.expose_headers {
                    out.push((h::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
                }
                Decision::Forward(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(method: &str, hs: &[(&str, &str)]) -> (Method, HeaderMap) {
        let mut m = HeaderMap::new();
        for (k, v) in hs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        (Method::from_bytes(method.as_bytes()).unwrap(), m)
    }

    fn names(d: &Decision) -> Vec<(String, String)> {
        let v = match d {
            Decision::Pass => return vec![],
            Decision::Respond(v) | Decision::Forward(v) => v,
        };
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    const ISTIO: &str = r#"{"allowOrigins":[{"exact":"https://a.example"},{"prefix":"https://dev."},{"regex":"https://.*\\.b\\.example"}],
        "allowMethods":["GET","POST"],"allowHeaders":["x-token"],"exposeHeaders":["x-trace"],"maxAge":"24h","allowCredentials":true}"#;

    #[test]
    fn istio_policy_table() {
        let p = CorsPolicy::parse(ISTIO).unwrap().unwrap();
        let pre = |o: &str| {
            req(
                "OPTIONS",
                &[("origin", o), ("access-control-request-method", "POST")],
            )
        };
        type Case = (
            &'static str,
            (Method, HeaderMap),
            &'static str,
            Vec<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("no origin: not CORS", req("GET", &[]), "pass", vec![]),
            (
                "exact origin, actual request",
                req("GET", &[("origin", "https://a.example")]),
                "forward",
                vec![
                    ("access-control-allow-origin", "https://a.example"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-trace"),
                ],
            ),
            (
                "prefix origin preflight answered here",
                pre("https://dev.shop"),
                "respond",
                vec![
                    ("access-control-allow-origin", "https://dev.shop"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-allow-methods", "GET,POST"),
                    ("access-control-allow-headers", "x-token"),
                    ("access-control-max-age", "86400"),
                ],
            ),
            (
                "regex is a full match",
                req("GET", &[("origin", "https://x.b.example.evil")]),
                "pass",
                vec![],
            ),
            (
                "regex origin",
                req("GET", &[("origin", "https://x.b.example")]),
                "forward",
                vec![
                    ("access-control-allow-origin", "https://x.b.example"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-trace"),
                ],
            ),
            (
                "other origin preflight forwarded (FORWARD default)",
                pre("https://evil"),
                "pass",
                vec![],
            ),
            (
                "OPTIONS without request-method is an actual request",
                req("OPTIONS", &[("origin", "https://a.example")]),
                "forward",
                vec![
                    ("access-control-allow-origin", "https://a.example"),
                    ("access-control-allow-credentials", "true"),
                    ("access-control-expose-headers", "x-trace"),
                ],
            ),
        ];
        for (what, (m, h), kind, want) in cases {
            let d = p.evaluate(&m, &h);
            let got_kind = match d {
                Decision::Pass => "pass",
                Decision::Respond(_) => "respond",
                Decision::Forward(_) => "forward",
            };
            assert_eq!(got_kind, kind, "{what}");
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(names(&d), want, "{what}");
        }
    }

    #[test]
    fn gateway_api_wildcards_star_and_ignore() {
        let p = CorsPolicy::parse(
            r#"{"allowOrigins":["https://*.example.com"],"allowMethods":["GET"],"maxAge":600}"#,
        )
        .unwrap()
        .unwrap();
        let (m, h) = req(
            "OPTIONS",
            &[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert_eq!(
            names(&p.evaluate(&m, &h)),
            vec![
                (
                    "access-control-allow-origin".into(),
                    "https://shop.example.com".into()
                ),
                ("access-control-allow-methods".into(), "GET".into()),
                ("access-control-max-age".into(), "600".into()),
            ]
        );
        let (m, h) = req("GET", &[("origin", "https://example.com.evil.org")]);
        assert_eq!(p.evaluate(&m, &h), Decision::Pass, "wildcard is anchored");

        let star = CorsPolicy::parse(r#"{"allowOrigins":[{"exact":"*"}]}"#)
            .unwrap()
            .unwrap();
        let (m, h) = req("GET", &[("origin", "https://anything")]);
        assert!(
            matches!(star.evaluate(&m, &h), Decision::Forward(_)),
            "exact \"*\" allows every origin (Envoy)"
        );

        let ignore =
            CorsPolicy::parse(r#"{"allowOrigin":["https://a"],"unmatchedPreflights":"IGNORE"}"#)
                .unwrap()
                .unwrap();
        let (m, h) = req(
            "OPTIONS",
            &[
                ("origin", "https://b"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert_eq!(
            ignore.evaluate(&m, &h),
            Decision::Respond(vec![]),
            "IGNORE: answered here, no CORS headers"
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        assert!(CorsPolicy::parse("").unwrap().is_none());
        for (json, want) in [
            (
                r#"{"allowOrigins":[{"regex":"("}]}"#,
                "corsPolicy: allowOrigins[0]: invalid regex",
            ),
            (r#"{"maxAge":"soon"}"#, "corsPolicy: maxAge"),
            (r#"{"allowMethods":"GET"}"#, "corsPolicy: invalid type"),
        ] {
            let e = CorsPolicy::parse(json).unwrap_err().to_string();
            assert!(e.starts_with(want), "{json}: {e}");
        }
    }
}
