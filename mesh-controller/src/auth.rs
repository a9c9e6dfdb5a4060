//! Who is calling: maps an agent's credential to the node it runs on. Both the config stream and the
//! certificate service ask here, so a node can only subscribe as itself and only obtain identities of
//! the pods scheduled on it.
//!
//! - files mode: a per-node bootstrap token (`--node-tokens`);
//! - Kubernetes: the agent's projected ServiceAccount token, checked with a `TokenReview` (audience
//!   `weft-controller`); the node comes from the token's pod binding
//!   (`authentication.kubernetes.io/node-name`, or the bound pod's `spec.nodeName`).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use serde_json::Value;

use crate::model::Store;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("bad or missing node token")]
    BadToken,
    #[error("the token is not an agent's: {0}")]
    NotAgent(String),
    #[error("the token is not bound to a pod on a node: {0}")]
    Unbound(String),
    #[error("token review failed: {0}")]
    Review(String),
    #[error("this controller runs with --insecure-no-auth: it cannot tell nodes apart")]
    Insecure,
}

/// The audience agent tokens are minted for (the DaemonSet's projected token).
pub const AUDIENCE: &str = "weft-controller";

pub enum NodeAuth {
    /// `--insecure-no-auth`: the config stream believes the claimed node; the CA refuses everything.
    Insecure,
    /// Files mode: bootstrap token → node.
    Tokens(BTreeMap<String, String>),
    /// Kubernetes: TokenReview.
    TokenReview(TokenReviewAuth),
}

impl NodeAuth {
    /// From `--node-tokens` (node → token).
    pub fn tokens(node_tokens: BTreeMap<String, String>) -> Self {
        Self::Tokens(node_tokens.into_iter().map(|(n, t)| (t, n)).collect())
    }

    /// The node a credential belongs to.
    pub async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        match self {
            Self::Insecure => Err(AuthError::Insecure),
            Self::Tokens(t) => t.get(token).cloned().ok_or(AuthError::BadToken),
            Self::TokenReview(r) => r.node_of(token).await,
        }
    }

    /// Whether a config-stream subscriber may receive `node`'s config.
    pub async fn check_subscriber(&self, node: &str, token: &str) -> Result<(), AuthError> {
        match self {
            Self::Insecure => Ok(()),
            _ => {
                let got = self.node_of(token).await?;
                if got == node {
                    Ok(())
                } else {
                    Err(AuthError::NotAgent(format!(
                        "the token belongs to node {got:?}, not {node:?}"
                    )))
                }
            }
        }
    }
}

/// TokenReview-backed authentication with a short cache (an agent reconnecting or fetching many
/// certificates does not cost one API call each).
pub struct TokenReviewAuth {
    client: kube::Client,
    /// `system:serviceaccount:<namespace>:<name>` of the agent DaemonSet.
    agent_user: String,
    store: Arc<Store>,
    cache: Mutex<HashMap<String, Reviewed>>,
}

/// A cached review: when, and the node (or why not).
type Reviewed = (Instant, Result<String, AuthError>);

const CACHE_TTL: Duration = Duration::from_secs(30);

impl TokenReviewAuth {
    /// `agent_sa` is `namespace/name`.
    pub fn new(client: kube::Client, agent_sa: &str, store: Arc<Store>) -> Self {
        let (ns, name) = agent_sa
            .split_once('/')
            .unwrap_or(("weft-system", agent_sa));
        Self {
            client,
            agent_user: format!("system:serviceaccount:{ns}:{name}"),
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::BadToken);
        }
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, r)) = cache.get(token)
                && at.elapsed() < CACHE_TTL
            {
                return r.clone();
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let status = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(e.to_string()))?
            .status
            .unwrap_or_default();
        let r = self.store.read(|m| {
            node_from_review(&status, &self.agent_user, |ns, name| pod_node(m, ns, name))
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        cache.insert(token.to_string(), (Instant::now(), r.clone()));
        r
    }
}

fn pod_node(m: &crate::model::Model, ns: &str, name: &str) -> Option<(String, String)> {
    let p = m.objects.get("Pod")?.get(&format!("{ns}/{name}"))?;
    let s = |ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some((s("/spec/nodeName"), s("/metadata/uid")))
}

/// Decides the node from a TokenReview result. Pure (table-tested): the token must be
/// authenticated, for the agent's ServiceAccount, and bound to a pod; the node is the token's
/// `node-name` claim, else the bound pod's node (whose UID must match the token's).
pub fn node_from_review(
    status: &TokenReviewStatus,
    agent_user: &str,
    pod: impl Fn(&str, &str) -> Option<(String, String)>,
) -> Result<String, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::Review(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    if username != agent_user {
        return Err(AuthError::NotAgent(format!(
            "{username} is not {agent_user}"
        )));
    }
    let extra = user.extra.unwrap_or_default();
    let claim = |k: &str| {
        extra
            .get(&format!("authentication.kubernetes.io/{k}"))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if let Some(node) = claim("node-name") {
        return Ok(node);
    }
    let (Some(pod_name), Some(pod_uid)) = (claim("pod-name"), claim("pod-uid")) else {
        return Err(AuthError::Unbound(format!(
            "{username}: no pod-name/pod-uid claims (use a projected ServiceAccount token)"
        )));
    };
    let ns = username.split(':').nth(2).unwrap_or("");
    match pod(ns, &pod_name) {
        Some((node, uid)) if uid == pod_uid && !node.is_empty() => Ok(node),
        Some(_) => Err(AuthError::Unbound(format!(
            "pod {ns}/{pod_name} was replaced or is not scheduled"
        ))),
        None => Err(AuthError::Unbound(format!("pod {ns}/{pod_name} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| {
                            (
                                format!("authentication.kubernetes.io/{k}"),
                                vec![v.to_string()],
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn token_review_table() {
        const AGENT: &str = "system:serviceaccount:weft-system:weft-agent";
        let pods = |ns: &str, name: &str| match (ns, name) {
            ("weft-system", "agent-x") => Some(("node-x".to_string(), "u1".to_string())),
            _ => None,
        };
        let cases: Vec<(&str, TokenReviewStatus, Result<&str, &str>)> = vec![
            (
                "node claim",
                status(true, AGENT, &[("node-name", "node-a")]),
                Ok("node-a"),
            ),
            (
                "pod binding",
                status(true, AGENT, &[("pod-name", "agent-x"), ("pod-uid", "u1")]),
                Ok("node-x"),
            ),
            (
                "stale pod uid",
                status(true, AGENT, &[("pod-name", "agent-x"), ("pod-uid", "u0")]),
                Err("replaced"),
            ),
            (
                "unknown pod",
                status(true, AGENT, &[("pod-name", "agent-y"), ("pod-uid", "u1")]),
                Err("not found"),
            ),
            ("unbound", status(true, AGENT, &[]), Err("projected")),
            (
                "other account",
                status(
                    true,
                    "system:serviceaccount:default:default",
                    &[("node-name", "node-a")],
                ),
                Err("is not"),
            ),
            (
                "not authenticated",
                status(false, AGENT, &[("node-name", "node-a")]),
                Err("not authenticated"),
            ),
        ];
        for (name, st, want) in cases {
            let got = node_from_review(&st, AGENT, pods).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(n), Ok(w)) => assert_eq!(n, w, "{name}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
