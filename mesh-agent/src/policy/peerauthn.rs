//! PeerAuthentication: the effective mTLS mode of a workload port.
//!
//! Istio rules implemented (API docs, and `convertedSelectorPeerAuthentications` /
//! `convertPeerAuthentication` in istio `pilot/pkg/serviceregistry/ambient/authorization.go`):
//! - three levels: mesh (root namespace, no selector), namespace (no selector), workload
//!   (`selector`); a selector policy with empty `matchLabels` counts as namespace level, as in
//!   Istio. Precedence workload > namespace > mesh.
//! - one policy per level: the oldest wins. The streamed `PeerAuthn` carries no creation time, so
//!   Weft picks the smallest `namespace/name` instead (deviation: deterministic, but not Istio's
//!   choice when two policies of one level conflict; the validator should flag the conflict).
//! - `UNSET` inherits from the next level up; nothing set anywhere = `PERMISSIVE`.
//! - `portLevelMtls` (keyed by the **workload** port) of the winning workload-level policy
//!   overrides the mode for that port; an `UNSET` port entry inherits the workload's mode. It is
//!   ignored on namespace and mesh levels (Istio requires a selector for it).
//! - `DISABLE` is returned as [`Mode::Disable`]. Ambient has no plaintext-only mode: ztunnel treats
//!   DISABLE like PERMISSIVE (plaintext accepted, mTLS still accepted), and so does
//!   [`Mode::accepts_plaintext`]. Only [`Mode::Strict`] refuses plaintext.
use mesh_common::proto::config::{PeerAuthn, PolicyScope, peer_authn};

use super::{Labels, PolicyError, selector_matches};

/// An effective mTLS mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// mTLS (HBONE) only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
    /// Istio: plaintext only; ambient (and Weft): same as PERMISSIVE.
    Disable,
}

impl Mode {
    /// Whether a plaintext (non-HBONE) connection may reach the port.
    pub fn accepts_plaintext(self) -> bool {
        self != Self::Strict
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
            Self::Disable => "DISABLE",
        }
    }

    /// `UNSET` (or a value this build does not know) → `None`: inherit.
    fn from_proto(m: i32) -> Option<Self> {
        match peer_authn::Mode::try_from(m) {
            Ok(peer_authn::Mode::Strict) => Some(Self::Strict),
            Ok(peer_authn::Mode::Permissive) => Some(Self::Permissive),
            Ok(peer_authn::Mode::Disable) => Some(Self::Disable),
            Ok(peer_authn::Mode::Unset) | Err(_) => None,
        }
    }
}

/// The effective mode and the policy that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub mode: Mode,
    /// `namespace/name` (with ` port <p>` for a port-level setting); `None`: the default.
    pub decided_by: Option<String>,
}

/// Rejects what [`effective`] would have to guess about (→ NACK).
pub fn validate(resource: &str, p: &PeerAuthn) -> Result<(), PolicyError> {
    PolicyScope::try_from(p.scope)
        .map_err(|_| PolicyError::new(resource, "scope", format!("unknown scope {}", p.scope)))?;
    peer_authn::Mode::try_from(p.mode)
        .map_err(|_| PolicyError::new(resource, "mode", format!("unknown mode {}", p.mode)))?;
    for (port, m) in &p.port_level_mtls {
        if !(1..=65535).contains(port) {
            return Err(PolicyError::new(
                resource,
                format!("port_level_mtls[{port}]"),
                "port must be 1-65535",
            ));
        }
        peer_authn::Mode::try_from(*m).map_err(|_| {
            PolicyError::new(
                resource,
                format!("port_level_mtls[{port}]"),
                format!("unknown mode {m}"),
            )
        })?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Mesh,
    Namespace,
    Workload,
}

/// The effective mode of `port` on a workload with `labels`, from the PeerAuthentications that
/// apply to it (the controller selected them; a selector policy whose selector does not match
/// `labels` is skipped here anyway).
pub fn effective<'a, L: Labels + ?Sized>(
    policies: impl IntoIterator<Item = &'a PeerAuthn>,
    labels: &L,
    port: u16,
) -> Effective {
    // The winner of each level: the smallest namespace/name (see the module documentation).
    let mut winners: [Option<&PeerAuthn>; 3] = [None; 3];
    for p in policies {
        let level = match PolicyScope::try_from(p.scope) {
            Ok(PolicyScope::Mesh) => Level::Mesh,
            Ok(PolicyScope::WorkloadSelector) if !p.selector.is_empty() => {
                if !selector_matches(&p.selector, labels) {
                    continue;
                }
                Level::Workload
            }
            Ok(PolicyScope::Namespace | PolicyScope::WorkloadSelector) => Level::Namespace,
            // PeerAuthentication has no targetRefs; nothing else is known.
            Ok(PolicyScope::TargetRefs) | Err(_) => continue,
        };
        let slot = &mut winners[level as usize];
        let older = |w: &PeerAuthn| (&p.namespace, &p.name) < (&w.namespace, &w.name);
        if slot.is_none_or(older) {
            *slot = Some(p);
        }
    }
    let name = |p: &PeerAuthn| format!("{}/{}", p.namespace, p.name);
    let mut eff = Effective {
        mode: Mode::Permissive,
        decided_by: None,
    };
    for p in winners.iter().flatten() {
        if let Some(m) = Mode::from_proto(p.mode) {
            eff = Effective {
                mode: m,
                decided_by: Some(name(p)),
            };
        }
    }
    if let Some(w) = winners[Level::Workload as usize]
        && let Some(m) = w
            .port_level_mtls
            .get(&u32::from(port))
            .and_then(|m| Mode::from_proto(*m))
    {
        eff = Effective {
            mode: m,
            decided_by: Some(format!("{} port {port}", name(w))),
        };
    }
    eff
}

/// [`effective`]'s mode alone.
pub fn effective_mode<'a, L: Labels + ?Sized>(
    policies: impl IntoIterator<Item = &'a PeerAuthn>,
    labels: &L,
    port: u16,
) -> Mode {
    effective(policies, labels, port).mode
}

#[cfg(test)]
mod tests;
