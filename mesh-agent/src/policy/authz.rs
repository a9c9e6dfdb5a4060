//! L4 AuthorizationPolicy evaluation for one inbound connection (Istio / ztunnel semantics).
//!
//! **Order** (Istio "Authorization Policy" evaluation): (1) a matching CUSTOM policy → deny, since
//! Weft has no external authorizer ("CUSTOM authorization is not supported"; ztunnel drops CUSTOM
//! policies, which fails open); (2) any matching DENY → deny; (3) no ALLOW policy applies → allow;
//! (4) a matching ALLOW → allow, else deny ("no ALLOW policy matched"). AUDIT policies never
//! change the decision: matching ones are listed in [`Decision::audited`]. Dry-run policies
//! (annotation `istio.io/dry-run: "true"`) take no part in the decision; each one's would-be
//! result, and the decision that enforcing them would give, go to [`Decision::dry_run_reports`].
//!
//! **Matching** (Istio `Rule`, ztunnel `rbac.rs`): a policy matches when any rule does; a rule
//! when at least one `from` (none = any), at least one `to` (none = any) and every `when` match;
//! inside a source or operation, set fields AND and the values of a field OR; a `not_*` field
//! matches when none of its values does. Strings: exact, `pre*`, `*suf`, `*` (presence: any
//! non-empty value). An absent attribute (no peer identity on a plaintext connection, no SNI)
//! matches no value, so `principals: ["*"]` needs mTLS and `notPrincipals: ["*"]` matches
//! plaintext. No rules = never matches (`spec: {}` is an ALLOW policy without rules: deny-all in
//! its scope); `rules: [{}]` (one empty rule) matches everything (see `mesh-controller/src/ir/authz.rs`).
//!
//! **Attributes:** `principals` and `source.principal` are the peer's SPIFFE ID without
//! `spiffe://` (`cluster.local/ns/x/sa/y`); values written with the `spiffe://` prefix are accepted
//! too. `namespaces` / `source.namespace` and `serviceAccounts` / `source.serviceAccount` come from
//! the `ns/<ns>/sa/<sa>` path of the SPIFFE ID; `serviceAccounts` values are `<ns>/<sa>` or `<sa>`
//! (= the policy's namespace), exact match only (Istio `stringToServiceAccountMatch`).
//! `ipBlocks` / `source.ip` match the source address (CIDR or bare IP = /32 or /128; IPv4-mapped
//! IPv6 addresses are compared as IPv4); `remoteIpBlocks` / `remote.ip` match the source address
//! too (no X-Forwarded-For at L4); `destination.ip` / `destination.port` the connection's
//! destination; `connection.sni` is always absent (HBONE carries no SNI). Every other `when` key is
//! L7.
//!
//! **HTTP attributes on a TCP connection** (Istio's fail-safe): an ALLOW rule that uses one
//! (`requestPrincipals`, `hosts`, `methods`, `paths`, `request.*` conditions, or the controller's
//! `l7` flag) never matches; in DENY, AUDIT and CUSTOM policies the rule is evaluated with its
//! HTTP parts removed, so a DENY rule whose only constraint is `methods: [GET]` denies all TCP
//! traffic in scope ("for a DENY rule, missing attributes are treated as matches").
//! `Conn::http` is carried for the L7 evaluator; this module has no request to look at, so today
//! the fail-safe applies whatever its value.
//!
//! **Deviations** (all fail closed):
//! - current ztunnel (istio `pilot/pkg/serviceregistry/ambient/authorization.go`) turns a `from`/`to`
//!   entry that is left empty by dropping HTTP fields into a match that ztunnel *skips*, so an
//!   HTTP-only DENY has **no effect** there; Weft follows the documented AuthorizationPolicy
//!   semantics above (it denies). `remoteIpBlocks`, `remote.ip`, `source.serviceAccount` are
//!   HTTP-only for ztunnel; Weft evaluates them at L4 as described.
//! - a `from`/`to` entry that arrives empty (invalid in Istio; the controller emits it e.g. when
//!   every port of `ports` was not a number) never matches in an ALLOW rule and matches anything in
//!   DENY/AUDIT/CUSTOM rules.
//! - a CUSTOM policy denies only when its rules match (Istio consults the provider only then).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use mesh_common::proto::config::{
    Authorization, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource, PolicyScope,
    authorization::Action,
};

use super::PolicyError;
use crate::hbone::InboundConn;

/// `when` keys evaluated on the connection; every other key needs the HTTP request.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// The verified peer of a connection, from its SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID without `spiffe://`: `cluster.local/ns/<ns>/sa/<sa>`.
    pub principal: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

impl Peer {
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` (the prefix is optional). An ID of another shape keeps
    /// its principal, without namespace or service account. Empty → `None`.
    pub fn from_spiffe(id: &str) -> Option<Self> {
        let principal = id.strip_prefix("spiffe://").unwrap_or(id);
        if principal.is_empty() {
            return None;
        }
        let parts: Vec<&str> = principal.split('/').collect();
        let (namespace, service_account) = match parts.as_slice() {
            [_td, "ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => {
                (Some((*ns).to_string()), Some((*sa).to_string()))
            }
            _ => (None, None),
        };
        Some(Self {
            principal: principal.to_string(),
            namespace,
            service_account,
        })
    }
}

/// One inbound connection, as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// `None`: plaintext (no verified peer).
    pub peer: Option<Peer>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The connection carries HTTP the proxy parses (the L7 evaluator's business; see the module
    /// documentation). `false` for plain L4.
    pub http: bool,
}

impl Conn {
    /// A TCP connection; `src_identity` is the peer's SPIFFE ID (`None` or empty = plaintext).
    pub fn new(src_identity: Option<&str>, src_ip: IpAddr, dst: SocketAddr) -> Self {
        Self {
            peer: src_identity.and_then(Peer::from_spiffe),
            src_ip,
            dst_ip: dst.ip(),
            dst_port: dst.port(),
            http: false,
        }
    }

    /// The connection the HBONE server is about to open to the app.
    pub fn from_inbound(c: &InboundConn) -> Self {
        Self::new(Some(&c.src_identity), c.src_ip, c.dst)
    }
}

/// The outcome for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Which policy and rule allowed or denied, or why none did.
    pub reason: String,
    /// Dry-run policies: what each would have done, then the decision enforcing them would give.
    pub dry_run_reports: Vec<String>,
    /// Matching AUDIT policies (`audited by <ns>/<name> rule <i>`).
    pub audited: Vec<String>,
}

impl Decision {
    pub(crate) fn deny(reason: String) -> Self {
        Self {
            allowed: false,
            reason,
            dry_run_reports: vec![],
            audited: vec![],
        }
    }

    /// `Err(reason)` when denied, as [`crate::hbone::InboundPolicy::check`] wants it.
    pub fn into_result(self) -> Result<(), String> {
        if self.allowed {
            Ok(())
        } else {
            Err(self.reason)
        }
    }
}

/// A compiled AuthorizationPolicy: the message plus its parsed matchers.
#[derive(Clone, Debug)]
pub struct Policy {
    /// `namespace/name`.
    name: String,
    action: Action,
    rules: Vec<Rule>,
    proto: Authorization,
}

// === impl Policy ===

impl Policy {
    /// Parses one policy; `resource` names it in errors (`authz/<ns>/<name>`).
    pub fn compile(resource: &str, a: &Authorization) -> Result<Self, PolicyError> {
        let err = |field: String, msg: String| PolicyError::new(resource, field, msg);
        let action = Action::try_from(a.action)
            .map_err(|_| err("action".into(), format!("unknown action {}", a.action)))?;
        PolicyScope::try_from(a.scope)
            .map_err(|_| err("scope".into(), format!("unknown scope {}", a.scope)))?;
        let rules = a
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(r, &a.namespace, &format!("rules[{i}]")))
            .collect::<Result<Vec<_>, (String, String)>>()
            .map_err(|(f, m)| err(f, m))?;
        Ok(Self {
            name: format!("{}/{}", a.namespace, a.name),
            action,
            rules,
            proto: a.clone(),
        })
    }

    /// `namespace/name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn dry_run(&self) -> bool {
        self.proto.dry_run
    }

    pub fn proto(&self) -> &Authorization {
        &self.proto
    }

    /// The index of the first rule matching `conn`, if any.
    pub fn matching_rule(&self, conn: &Conn) -> Option<usize> {
        // ALLOW must match for real; the others treat what they cannot see as a match.
        let strict = self.action == Action::Allow;
        self.rules.iter().position(|r| r.matches(conn, strict))
    }
}

/// Evaluates the policies that apply to the destination workload (see the module documentation).
pub fn evaluate<'a>(policies: impl IntoIterator<Item = &'a Policy>, conn: &Conn) -> Decision {
    let all: Vec<&Policy> = policies.into_iter().collect();
    let enforced: Vec<&Policy> = all.iter().copied().filter(|p| !p.dry_run()).collect();
    let (allowed, reason) = decide(&enforced, conn);
    let audited = enforced
        .iter()
        .filter(|p| p.action == Action::Audit)
        .filter_map(|p| {
            p.matching_rule(conn)
                .map(|i| format!("audited by {} rule {i}", p.name))
        })
        .collect();
    let mut dry_run_reports: Vec<String> = all
        .iter()
        .filter(|p| p.dry_run())
        .map(|p| match p.matching_rule(conn) {
            Some(i) => format!(
                "dry-run {} {} matched rule {i}",
                p.action.as_str_name(),
                p.name
            ),
            None => format!(
                "dry-run {} {} did not match",
                p.action.as_str_name(),
                p.name
            ),
        })
        .collect();
    if !dry_run_reports.is_empty() {
        let (would, why) = decide(&all, conn);
        dry_run_reports.push(format!(
            "with dry-run policies enforced: {} ({why})",
            if would { "allowed" } else { "denied" }
        ));
    }
    Decision {
        allowed,
        reason,
        dry_run_reports,
        audited,
    }
}

/// CUSTOM → DENY → ALLOW over `policies` (all treated as enforced).
fn decide(policies: &[&Policy], conn: &Conn) -> (bool, String) {
    for p in policies.iter().filter(|p| p.action == Action::Custom) {
        if let Some(i) = p.matching_rule(conn) {
            let provider = &p.proto.provider;
            return (
                false,
                format!(
                    "CUSTOM authorization is not supported (policy {} rule {i}, provider {provider:?})",
                    p.name
                ),
            );
        }
    }
    for p in policies.iter().filter(|p| p.action == Action::Deny) {
        if let Some(i) = p.matching_rule(conn) {
            return (false, format!("denied by DENY policy {} rule {i}", p.name));
        }
    }
    let allows: Vec<&&Policy> = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return (true, "no ALLOW policy applies".into());
    }
    for p in &allows {
        if let Some(i) = p.matching_rule(conn) {
            return (true, format!("allowed by ALLOW policy {} rule {i}", p.name));
        }
    }
    let names: Vec<&str> = allows.iter().map(|p| p.name.as_str()).collect();
    (
        false,
        format!("no ALLOW policy matched ({})", names.join(", ")),
    )
}

// === matchers ===

/// Istio string match.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StrMatch {
    fn parse(v: &str) -> Self {
        if v == "*" {
            Self::Presence
        } else if let Some(s) = v.strip_prefix('*') {
            Self::Suffix(s.to_string())
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else {
            Self::Exact(v.to_string())
        }
    }

    /// A principal value: as [`Self::parse`], with `spiffe://` dropped from exact and prefix
    /// values (Istio writes principals without it).
    fn principal(v: &str) -> Self {
        match Self::parse(v) {
            Self::Exact(s) => Self::Exact(s.strip_prefix("spiffe://").unwrap_or(&s).to_string()),
            Self::Prefix(s) => Self::Prefix(s.strip_prefix("spiffe://").unwrap_or(&s).to_string()),
            other => other,
        }
    }

    fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Presence => !v.is_empty(),
        }
    }
}

/// An IP block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::/n`, or a bare address (/32, /128). Host bits are ignored.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(format!("{s:?}: prefix length must be 0-{max}")),
            },
        };
        Ok(Self { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.len)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The first `len` bits of `a` and `b` (left-aligned in a u128) are equal.
fn prefix_eq(a: u128, b: u128, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len.min(128)));
    a & mask == b & mask
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, from a dual-stack socket) → IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Values OR, negations NOR; an empty list is no constraint.
fn field<T>(pos: &[T], neg: &[T], m: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || pos.iter().any(&m)) && !neg.iter().any(&m)
}

/// A service account: (namespace, name), exact.
type Sa = (String, String);

fn service_account(v: &str, policy_ns: &str) -> Sa {
    match v.split_once('/') {
        Some((ns, sa)) => (ns.to_string(), sa.to_string()),
        None => (policy_ns.to_string(), v.to_string()),
    }
}

fn sa_matches(sa: &Sa, peer: Option<&Peer>) -> bool {
    peer.is_some_and(|p| {
        p.namespace.as_deref() == Some(sa.0.as_str())
            && p.service_account.as_deref() == Some(sa.1.as_str())
    })
}

fn cidrs(values: &[String], field: &str) -> Result<Vec<Cidr>, (String, String)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Cidr::parse(v).map_err(|e| (format!("{field}[{i}]"), e)))
        .collect()
}

#[derive(Clone, Debug)]
struct Source {
    principals: Vec<StrMatch>,
    not_principals: Vec<StrMatch>,
    namespaces: Vec<StrMatch>,
    not_namespaces: Vec<StrMatch>,
    service_accounts: Vec<Sa>,
    not_service_accounts: Vec<Sa>,
    ip_blocks: Vec<Cidr>,
    not_ip_blocks: Vec<Cidr>,
    remote_ip_blocks: Vec<Cidr>,
    not_remote_ip_blocks: Vec<Cidr>,
    /// Uses an HTTP attribute (request principals).
    l7: bool,
    /// Arrived with no field set.
    empty: bool,
}

impl Source {
    fn compile(s: &AuthzSource, policy_ns: &str, at: &str) -> Result<Self, (String, String)> {
        let strs = |v: &[String], f: fn(&str) -> StrMatch| v.iter().map(|s| f(s)).collect();
        let sas = |v: &[String]| v.iter().map(|s| service_account(s, policy_ns)).collect();
        let l7 = !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
        let me = Self {
            principals: strs(&s.principals, StrMatch::principal),
            not_principals: strs(&s.not_principals, StrMatch::principal),
            namespaces: strs(&s.namespaces, StrMatch::parse),
            not_namespaces: strs(&s.not_namespaces, StrMatch::parse),
            service_accounts: sas(&s.service_accounts),
            not_service_accounts: sas(&s.not_service_accounts),
            ip_blocks: cidrs(&s.ip_blocks, &format!("{at}.ip_blocks"))?,
            not_ip_blocks: cidrs(&s.not_ip_blocks, &format!("{at}.not_ip_blocks"))?,
            remote_ip_blocks: cidrs(&s.remote_ip_blocks, &format!("{at}.remote_ip_blocks"))?,
            not_remote_ip_blocks: cidrs(
                &s.not_remote_ip_blocks,
                &format!("{at}.not_remote_ip_blocks"),
            )?,
            l7,
            empty: false,
        };
        let empty = !l7
            && me.principals.is_empty()
            && me.not_principals.is_empty()
            && me.namespaces.is_empty()
            && me.not_namespaces.is_empty()
            && me.service_accounts.is_empty()
            && me.not_service_accounts.is_empty()
            && me.ip_blocks.is_empty()
            && me.not_ip_blocks.is_empty()
            && me.remote_ip_blocks.is_empty()
            && me.not_remote_ip_blocks.is_empty();
        Ok(Self { empty, ..me })
    }

    /// The L4 fields (HTTP ones are handled by the caller).
    fn matches(&self, c: &Conn) -> bool {
        let principal = c.peer.as_ref().map(|p| p.principal.as_str());
        let ns = c.peer.as_ref().and_then(|p| p.namespace.as_deref());
        let ip = |b: &Cidr| b.contains(c.src_ip);
        field(&self.principals, &self.not_principals, |m| {
            m.matches(principal)
        }) && field(&self.namespaces, &self.not_namespaces, |m| m.matches(ns))
            && field(&self.service_accounts, &self.not_service_accounts, |sa| {
                sa_matches(sa, c.peer.as_ref())
            })
            && field(&self.ip_blocks, &self.not_ip_blocks, ip)
            && field(&self.remote_ip_blocks, &self.not_remote_ip_blocks, ip)
    }
}

#[derive(Clone, Debug)]
struct Operation {
    ports: Vec<u32>,
    not_ports: Vec<u32>,
    /// Uses an HTTP attribute (hosts, methods, paths).
    l7: bool,
    /// Arrived with no field set.
    empty: bool,
}

impl Operation {
    fn compile(o: &AuthzOperation, at: &str) -> Result<Self, (String, String)> {
        for (name, list) in [("ports", &o.ports), ("not_ports", &o.not_ports)] {
            if let Some((i, p)) = list
                .iter()
                .enumerate()
                .find(|(_, p)| !(1..=65535).contains(*p))
            {
                return Err((
                    format!("{at}.{name}[{i}]"),
                    format!("port {p} is not 1-65535"),
                ));
            }
        }
        let l7 = [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|l| !l.is_empty());
        Ok(Self {
            ports: o.ports.clone(),
            not_ports: o.not_ports.clone(),
            l7,
            empty: !l7 && o.ports.is_empty() && o.not_ports.is_empty(),
        })
    }

    fn matches(&self, c: &Conn) -> bool {
        field(&self.ports, &self.not_ports, |p| {
            *p == u32::from(c.dst_port)
        })
    }
}

/// A `when` value matcher for one L4 key.
#[derive(Clone, Debug)]
enum CondValues {
    SourceIp(Vec<Cidr>),
    DestinationIp(Vec<Cidr>),
    DestinationPort(Vec<u16>),
    Namespace(Vec<StrMatch>),
    Principal(Vec<StrMatch>),
    ServiceAccount(Vec<Sa>),
    /// `connection.sni`: never present on an HBONE inbound connection.
    Sni(Vec<StrMatch>),
}

impl CondValues {
    fn compile(
        key: &str,
        values: &[String],
        policy_ns: &str,
        at: &str,
    ) -> Result<Option<Self>, (String, String)> {
        let strs = |f: fn(&str) -> StrMatch| values.iter().map(|v| f(v)).collect();
        Ok(Some(match key {
            "source.ip" | "remote.ip" => Self::SourceIp(cidrs(values, at)?),
            "destination.ip" => Self::DestinationIp(cidrs(values, at)?),
            "destination.port" => Self::DestinationPort(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.trim().parse::<u16>() {
                        Ok(p) if p > 0 => Ok(p),
                        _ => Err((format!("{at}[{i}]"), format!("{v:?} is not a port 1-65535"))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "source.namespace" => Self::Namespace(strs(StrMatch::parse)),
            "source.principal" => Self::Principal(strs(StrMatch::principal)),
            "source.serviceAccount" => Self::ServiceAccount(
                values
                    .iter()
                    .map(|v| service_account(v, policy_ns))
                    .collect(),
            ),
            "connection.sni" => Self::Sni(strs(StrMatch::parse)),
            _ => return Ok(None),
        }))
    }

    fn any(&self, c: &Conn) -> bool {
        let peer = c.peer.as_ref();
        match self {
            Self::SourceIp(v) => v.iter().any(|b| b.contains(c.src_ip)),
            Self::DestinationIp(v) => v.iter().any(|b| b.contains(c.dst_ip)),
            Self::DestinationPort(v) => v.contains(&c.dst_port),
            Self::Namespace(v) => {
                let ns = peer.and_then(|p| p.namespace.as_deref());
                v.iter().any(|m| m.matches(ns))
            }
            Self::Principal(v) => {
                let pr = peer.map(|p| p.principal.as_str());
                v.iter().any(|m| m.matches(pr))
            }
            Self::ServiceAccount(v) => v.iter().any(|sa| sa_matches(sa, peer)),
            Self::Sni(v) => v.iter().any(|m| m.matches(None)),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::SourceIp(v) | Self::DestinationIp(v) => v.is_empty(),
            Self::DestinationPort(v) => v.is_empty(),
            Self::Namespace(v) | Self::Principal(v) | Self::Sni(v) => v.is_empty(),
            Self::ServiceAccount(v) => v.is_empty(),
        }
    }
}

#[derive(Clone, Debug)]
struct Condition {
    /// `None`: an HTTP key (or one this evaluator does not know).
    values: Option<CondValues>,
    not_values: Option<CondValues>,
}

impl Condition {
    fn compile(c: &AuthzCondition, policy_ns: &str, at: &str) -> Result<Self, (String, String)> {
        if c.l7 || !L4_CONDITION_KEYS.contains(&c.key.as_str()) {
            return Ok(Self {
                values: None,
                not_values: None,
            });
        }
        Ok(Self {
            values: CondValues::compile(&c.key, &c.values, policy_ns, &format!("{at}.values"))?,
            not_values: CondValues::compile(
                &c.key,
                &c.not_values,
                policy_ns,
                &format!("{at}.not_values"),
            )?,
        })
    }

    fn l7(&self) -> bool {
        self.values.is_none()
    }

    fn matches(&self, c: &Conn) -> bool {
        let pos = self
            .values
            .as_ref()
            .is_none_or(|v| v.is_empty() || v.any(c));
        let neg = self.not_values.as_ref().is_some_and(|v| v.any(c));
        pos && !neg
    }
}

#[derive(Clone, Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
    /// Uses an HTTP attribute anywhere (or the controller says so).
    l7: bool,
}

impl Rule {
    fn compile(r: &AuthzRule, policy_ns: &str, at: &str) -> Result<Self, (String, String)> {
        let from = r
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| Source::compile(s, policy_ns, &format!("{at}.from[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let to =
            r.to.iter()
                .enumerate()
                .map(|(i, o)| Operation::compile(o, &format!("{at}.to[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
        let when = r
            .when
            .iter()
            .enumerate()
            .map(|(i, c)| Condition::compile(c, policy_ns, &format!("{at}.when[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let l7 = r.l7
            || from.iter().any(|s| s.l7)
            || to.iter().any(|o| o.l7)
            || when.iter().any(Condition::l7);
        Ok(Self { from, to, when, l7 })
    }

    /// `strict` (ALLOW): an HTTP attribute makes the rule never match on TCP, and an entry that
    /// arrived empty never matches. Otherwise HTTP attributes and empty entries are no constraint.
    fn matches(&self, c: &Conn, strict: bool) -> bool {
        if strict && self.l7 {
            return false;
        }
        let from = |s: &Source| !(strict && s.empty) && s.matches(c);
        let to = |o: &Operation| !(strict && o.empty) && o.matches(c);
        (self.from.is_empty() || self.from.iter().any(from))
            && (self.to.is_empty() || self.to.iter().any(to))
            && self.when.iter().all(|w| w.matches(c))
    }
}

#[cfg(test)]
mod tests;
