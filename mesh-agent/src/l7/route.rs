//! Compiling a `RouteTable` (regexes built once) and selecting the route for a request.
use std::{collections::BTreeMap, net::IpAddr};

use mesh_common::proto::config::{
    HttpMatch, HttpRoute, KeyMatch, L4Match, RouteTable, StringMatch, TcpRoute,
};
use regex::Regex;

use super::request::RequestInfo;
use mesh_common::proto::config::string_match::Kind;

use super::cors::CorsPolicy;

/// A route table that failed to compile (the agent NACKs the update with this message).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "route table {table}: route {route}: match {block} {field}: invalid regex {pattern:?}: {source}"
    )]
    Regex {
        /// The table's host (`reviews.default.svc.cluster.local`).
        table: String,
        /// `#<index>` plus the route's name and origin when set.
        route: String,
        /// Index of the match block in the route.
        block: usize,
        /// `uri`, `method`, `authority`, `scheme`, `headers["<name>"]`,
        /// `without_headers["<name>"]`, `query_params["<name>"]`.
        field: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("route table {table}: route {route}: {source}")]
    Cors {
        table: String,
        route: String,
        #[source]
        source: super::cors::CorsError,
    },
    #[error(
        "route table {table}: route {route}: rewrite regex_match: invalid regex {pattern:?}: {source}"
    )]
    RewriteRegex {
        table: String,
        route: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error(
        "route table {table}: tcp route {route}: match {block} {field}: invalid subnet {subnet:?} (want an IP or IP/prefix)"
    )]
    Subnet {
        table: String,
        route: String,
        block: usize,
        /// `destination_subnets` or `source_subnet`.
        field: &'static str,
        subnet: String,
    },
}

/// What to do with a request that matches no route of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// VirtualService table: Istio's default route — all endpoints of the service, on the port
    /// the request was sent to.
    WholeService,
    /// Gateway API table: answer 404 (Envoy response flag NR).
    NotFound,
}

/// The outcome of [`CompiledTable::select`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection<'a> {
    /// The first route (in table order) one of whose match blocks matches.
    Route { index: usize, route: &'a HttpRoute },
    /// No route matched.
    NoRoute(Unmatched),
}

/// A compiled string condition.
#[derive(Debug)]
enum Str {
    /// No variant set: anything / presence.
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Str {
    fn matches(&self, v: &str) -> bool {
        match self {
            Str::Any => true,
            Str::Exact(e) => v == e,
            Str::Prefix(p) => v.starts_with(p.as_str()),
            Str::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
enum Uri {
    Any,
    Exact {
        value: String,
        ignore_case: bool,
    },
    /// Istio prefix: a plain string prefix.
    Prefix {
        value: String,
        ignore_case: bool,
    },
    /// Gateway API PathPrefix: whole segments (the value without its trailing `/`; "" = all).
    SegmentPrefix {
        value: String,
        ignore_case: bool,
    },
    Regex(Regex),
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn starts_with(s: &str, p: &str, ignore_case: bool) -> bool {
    s.len() >= p.len() && s.is_char_boundary(p.len()) && eq(&s[..p.len()], p, ignore_case)
}

impl Uri {
    fn matches(&self, path: &str) -> bool {
        match self {
            Uri::Any => true,
            Uri::Exact { value, ignore_case } => eq(path, value, *ignore_case),
            Uri::Prefix { value, ignore_case } => starts_with(path, value, *ignore_case),
            Uri::SegmentPrefix { value, ignore_case } => {
                value.is_empty()
                    || (starts_with(path, value, *ignore_case)
                        && matches!(path.as_bytes().get(value.len()), None | Some(b'/')))
            }
            Uri::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
struct KeyCond {
    name: String,
    value: Str,
}

#[derive(Debug)]
struct Block {
    uri: Uri,
    method: Str,
    authority: Str,
    scheme: Str,
    headers: Vec<KeyCond>,
    without_headers: Vec<KeyCond>,
    query_params: Vec<KeyCond>,
    port: u32,
    source_labels: Vec<(String, String)>,
    source_namespace: String,
}

impl Block {
    /// Every set condition holds (AND).
    fn matches(&self, req: &RequestInfo) -> bool {
        (self.port == 0 || self.port == u32::from(req.dst_port))
            && (self.source_namespace.is_empty() || self.source_namespace == req.src_namespace)
            && self
                .source_labels
                .iter()
                .all(|(k, v)| req.src_labels.get(k) == Some(v))
            && self.uri.matches(&req.path)
            && self.method.matches(&req.method)
            && self.scheme.matches(&req.scheme)
            && self.authority.matches(&req.authority)
            && self.headers.iter().all(|h| header_matches(h, req))
            && self.without_headers.iter().all(|h| !header_matches(h, req))
            && self
                .query_params
                .iter()
                .all(|q| req.query_param(&q.name).is_some_and(|v| q.value.matches(v)))
    }
}

/// A header condition: absent never matches; several values are joined with `,`.
fn header_matches(h: &KeyCond, req: &RequestInfo) -> bool {
    req.header(&h.name).is_some_and(|v| h.value.matches(&v))
}

#[derive(Debug)]
struct Compiled {
    /// Empty = matches every request.
    blocks: Vec<Block>,
    cors: Option<CorsPolicy>,
    regex_rewrite: Option<RegexRewrite>,
}

/// Istio `rewrite.uriRegexRewrite` (Envoy `regex_rewrite`): every match of the pattern in the
/// path is replaced by the substitution (regex crate syntax, translated by the controller).
#[derive(Debug)]
pub struct RegexRewrite {
    pattern: Regex,
    substitution: String,
}

impl RegexRewrite {
    /// The rewritten path (the query is not part of `path`).
    pub fn apply(&self, path: &str) -> String {
        self.pattern
            .replace_all(path, self.substitution.as_str())
            .into_owned()
    }
}

/// A proto `RouteTable` with its regexes compiled, ready for [`CompiledTable::select`].
#[derive(Debug)]
pub struct CompiledTable {
    table: RouteTable,
    routes: Vec<Compiled>,
    tcp: Vec<Vec<L4Block>>,
}

/// RE2 full-match: the whole string must match.
fn full_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn table_name(t: &RouteTable) -> String {
    if t.host.is_empty() {
        format!("{}/{}", t.namespace, t.service)
    } else {
        t.host.clone()
    }
}

/// Context for error messages while compiling one match block.
struct Ctx<'a> {
    table: &'a RouteTable,
    index: usize,
    route: &'a HttpRoute,
    block: usize,
}

impl Ctx<'_> {
    fn route_label(&self) -> String {
        let mut route = format!("#{}", self.index);
        if !self.route.name.is_empty() {
            route.push_str(&format!(" {:?}", self.route.name));
        }
        if let Some(o) = &self.route.origin {
            route.push_str(&format!(" ({} rule {})", o.object, o.rule));
        }
        route
    }

    fn err(&self, field: String, pattern: &str, e: regex::Error) -> CompileError {
        CompileError::Regex {
            table: table_name(self.table),
            route: self.route_label(),
            block: self.block,
            field,
            pattern: pattern.to_string(),
            source: Box::new(e),
        }
    }

    fn string(&self, m: Option<&StringMatch>, field: &str) -> Result<Str, CompileError> {
        Ok(match m.and_then(|m| m.kind.as_ref()) {
            None => Str::Any,
            Some(Kind::Exact(e)) => Str::Exact(e.clone()),
            Some(Kind::Prefix(p)) => Str::Prefix(p.clone()),
            Some(Kind::Regex(r)) => {
                Str::Regex(full_regex(r).map_err(|e| self.err(field.to_string(), r, e))?)
            }
        })
    }

    fn keys(&self, ks: &[KeyMatch], field: &str) -> Result<Vec<KeyCond>, CompileError> {
        ks.iter()
            .map(|k| {
                Ok(KeyCond {
                    name: k.name.clone(),
                    value: self.string(k.value.as_ref(), &format!("{field}[{:?}]", k.name))?,
                })
            })
            .collect()
    }

    fn block(&self, m: &HttpMatch) -> Result<Block, CompileError> {
        let ignore_case = m.ignore_uri_case;
        let uri = match m.uri.as_ref().and_then(|u| u.kind.as_ref()) {
            None => Uri::Any,
            Some(Kind::Exact(v)) => Uri::Exact {
                value: v.clone(),
                ignore_case,
            },
            Some(Kind::Prefix(v)) if m.uri_prefix_by_segment => Uri::SegmentPrefix {
                value: v.trim_end_matches('/').to_string(),
                ignore_case,
            },
            Some(Kind::Prefix(v)) => Uri::Prefix {
                value: v.clone(),
                ignore_case,
            },
            // Istio: ignoreUriCase applies to exact and prefix only.
            Some(Kind::Regex(r)) => {
                Uri::Regex(full_regex(r).map_err(|e| self.err("uri".into(), r, e))?)
            }
        };
        Ok(Block {
            uri,
            method: self.string(m.method.as_ref(), "method")?,
            authority: self.string(m.authority.as_ref(), "authority")?,
            scheme: self.string(m.scheme.as_ref(), "scheme")?,
            headers: self.keys(&m.headers, "headers")?,
            without_headers: self.keys(&m.without_headers, "without_headers")?,
            query_params: self.keys(&m.query_params, "query_params")?,
            port: m.port,
            source_labels: m
                .source_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            source_namespace: m.source_namespace.clone(),
        })
    }
}

impl CompiledTable {
    /// Compiles every regex of the table; the first invalid one fails the whole table.
    pub fn new(table: RouteTable) -> Result<CompiledTable, CompileError> {
        let mut routes = Vec::with_capacity(table.http.len());
        for (index, route) in table.http.iter().enumerate() {
            let blocks = route
                .matches
                .iter()
                .enumerate()
                .map(|(block, m)| {
                    Ctx {
                        table: &table,
                        index,
                        route,
                        block,
                    }
                    .block(m)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cors = CorsPolicy::parse(&route.cors_policy_json).map_err(|source| {
                let ctx = Ctx {
                    table: &table,
                    index,
                    route,
                    block: 0,
                };
                CompileError::Cors {
                    table: table_name(&table),
                    route: ctx.route_label(),
                    source,
                }
            })?;
            let regex_rewrite = match route.rewrite.as_ref() {
                Some(rw) if !rw.regex_match.is_empty() => Some(RegexRewrite {
                    pattern: Regex::new(&rw.regex_match).map_err(|e| {
                        let ctx = Ctx {
                            table: &table,
                            index,
                            route,
                            block: 0,
                        };
                        CompileError::RewriteRegex {
                            table: table_name(&table),
                            route: ctx.route_label(),
                            pattern: rw.regex_match.clone(),
                            source: Box::new(e),
                        }
                    })?,
                    substitution: rw.regex_substitution.clone(),
                }),
                _ => None,
            };
            routes.push(Compiled {
                blocks,
                cors,
                regex_rewrite,
            });
        }
        let mut tcp = Vec::with_capacity(table.tcp.len());
        for (index, route) in table.tcp.iter().enumerate() {
            let blocks = route
                .matches
                .iter()
                .enumerate()
                .map(|(block, m)| {
                    L4Block::new(m).map_err(|(field, subnet)| CompileError::Subnet {
                        table: table_name(&table),
                        route: match &route.origin {
                            Some(o) => format!("#{index} ({} rule {})", o.object, o.rule),
                            None => format!("#{index}"),
                        },
                        block,
                        field,
                        subnet,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            tcp.push(blocks);
        }
        Ok(CompiledTable { table, routes, tcp })
    }

    /// The CORS policy of route `index` (from [`Selection::Route`]).
    pub fn cors(&self, index: usize) -> Option<&CorsPolicy> {
        self.routes.get(index).and_then(|c| c.cors.as_ref())
    }

    /// The `uriRegexRewrite` of route `index` (from [`Selection::Route`]).
    pub fn regex_rewrite(&self, index: usize) -> Option<&RegexRewrite> {
        self.routes
            .get(index)
            .and_then(|c| c.regex_rewrite.as_ref())
    }

    /// The table as received.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// What an unmatched request gets: 404 for Gateway API tables, the whole service otherwise.
    pub fn unmatched(&self) -> Unmatched {
        if self.table.gateway_api {
            Unmatched::NotFound
        } else {
            Unmatched::WholeService
        }
    }

    /// The first route with a matching block (blocks ORed, conditions within a block ANDed; a
    /// route without blocks matches everything).
    pub fn select(&self, req: &RequestInfo) -> Selection<'_> {
        for (index, (c, route)) in self.routes.iter().zip(&self.table.http).enumerate() {
            if c.blocks.is_empty() || c.blocks.iter().any(|b| b.matches(req)) {
                return Selection::Route { index, route };
            }
        }
        // Gateway API: routes attached to one port of the Service (parentRef `port`) leave the
        // other ports alone — their traffic takes the default route, not a 404.
        if self.table.gateway_api && !self.covers_port(req.dst_port) {
            return Selection::NoRoute(Unmatched::WholeService);
        }
        Selection::NoRoute(self.unmatched())
    }

    /// Whether some HTTP route can apply to requests sent to `port` (a route without match
    /// blocks, or a block for any port or this one).
    pub fn covers_port(&self, port: u16) -> bool {
        self.routes.iter().any(|c| {
            c.blocks.is_empty()
                || c.blocks
                    .iter()
                    .any(|b| b.port == 0 || b.port == u32::from(port))
        })
    }

    /// The first `tcp[]` route matching a connection (blocks ORed, a route without blocks matches
    /// every connection), or `None`: the connection goes to the whole service (Istio's default;
    /// Gateway API tables carry no TCP routes).
    pub fn select_tcp(&self, conn: &TcpInfo<'_>) -> Option<(usize, &TcpRoute)> {
        self.tcp
            .iter()
            .zip(&self.table.tcp)
            .enumerate()
            .find(|(_, (blocks, _))| blocks.is_empty() || blocks.iter().any(|b| b.matches(conn)))
            .map(|(index, (_, route))| (index, route))
    }
}

/// What a `tcp[]` route matches on (Istio `L4MatchAttributes`).
#[derive(Clone, Copy, Debug)]
pub struct TcpInfo<'a> {
    /// The original destination (the service VIP, or the pod IP when dialled directly).
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The client pod's IP (None when unknown: `source_subnet` matches never hold).
    pub src_ip: Option<IpAddr>,
    /// The client workload ("" / empty when unknown).
    pub src_namespace: &'a str,
    pub src_labels: &'a BTreeMap<String, String>,
}

/// An `IP/prefix` subnet.
#[derive(Clone, Copy, Debug)]
struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// `a.b.c.d`, `a.b.c.d/n`, `x::y`, `x::y/n`; `None` if malformed.
    fn parse(s: &str) -> Option<Subnet> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Subnet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let host_bits = width - u32::from(self.prefix);
        host_bits >= width || (net >> host_bits) == (ip >> host_bits)
    }
}

#[derive(Debug)]
struct L4Block {
    subnets: Vec<Subnet>,
    source: Option<Subnet>,
    port: u32,
    source_labels: Vec<(String, String)>,
    source_namespace: String,
}

impl L4Block {
    /// Err = the field and the malformed subnet.
    fn new(m: &L4Match) -> Result<L4Block, (&'static str, String)> {
        Ok(L4Block {
            subnets: m
                .destination_subnets
                .iter()
                .map(|s| Subnet::parse(s).ok_or_else(|| ("destination_subnets", s.clone())))
                .collect::<Result<_, _>>()?,
            source: match m.source_subnet.as_str() {
                "" => None,
                s => Some(Subnet::parse(s).ok_or(("source_subnet", s.to_string()))?),
            },
            port: m.port,
            source_labels: m
                .source_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    fn matches(&self, c: &TcpInfo<'_>) -> bool {
        (self.subnets.is_empty() || self.subnets.iter().any(|s| s.contains(c.dst_ip)))
            && self
                .source
                .is_none_or(|s| c.src_ip.is_some_and(|ip| s.contains(ip)))
            && (self.port == 0 || self.port == u32::from(c.dst_port))
            && (self.source_namespace.is_empty() || self.source_namespace == c.src_namespace)
            && self
                .source_labels
                .iter()
                .all(|(k, v)| c.src_labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_common::proto::config::Origin;

    use super::*;

    fn exact(s: &str) -> Option<StringMatch> {
        Some(StringMatch {
            kind: Some(Kind::Exact(s.into())),
        })
    }
    fn prefix(s: &str) -> Option<StringMatch> {
        Some(StringMatch {
            kind: Some(Kind::Prefix(s.into())),
        })
    }
    fn regex(s: &str) -> Option<StringMatch> {
        Some(StringMatch {
            kind: Some(Kind::Regex(s.into())),
        })
    }
    fn present() -> Option<StringMatch> {
        Some(StringMatch { kind: None })
    }
    fn key(name: &str, value: Option<StringMatch>) -> KeyMatch {
        KeyMatch {
            name: name.into(),
            value,
        }
    }
    fn route(name: &str, matches: Vec<HttpMatch>) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches,
            ..Default::default()
        }
    }
    fn table(gateway_api: bool, http: Vec<HttpRoute>) -> CompiledTable {
        CompiledTable::new(RouteTable {
            host: "reviews.default.svc.cluster.local".into(),
            namespace: "default".into(),
            service: "reviews".into(),
            gateway_api,
            http,
            ..Default::default()
        })
        .expect("table compiles")
    }
    fn req(path: &str) -> RequestInfo {
        RequestInfo {
            method: "GET".into(),
            scheme: "http".into(),
            path: path.into(),
            authority: "reviews:9080".into(),
            dst_port: 9080,
            src_namespace: "default".into(),
            ..Default::default()
        }
    }
    fn with_header(mut r: RequestInfo, k: &str, v: &str) -> RequestInfo {
        r.headers.entry(k.into()).or_default().push(v.into());
        r
    }
    fn with_query(mut r: RequestInfo, k: &str, v: &str) -> RequestInfo {
        r.query.push((k.into(), v.into()));
        r
    }
    /// The selected route's name, or "<default>" / "<404>".
    fn pick(t: &CompiledTable, r: &RequestInfo) -> String {
        match t.select(r) {
            Selection::Route { index, route } => {
                assert_eq!(&t.table().http[index], route);
                route.name.clone()
            }
            Selection::NoRoute(Unmatched::WholeService) => "<default>".into(),
            Selection::NoRoute(Unmatched::NotFound) => "<404>".into(),
        }
    }
    /// One single-block route "hit" plus nothing else: does `m` match `r`?
    fn hits(m: HttpMatch, r: &RequestInfo) -> bool {
        pick(&table(false, vec![route("hit", vec![m])]), r) == "hit"
    }

    #[test]
    fn compiled_table_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CompiledTable>();
        send_sync::<CompileError>();
    }

    #[test]
    fn first_match_wins_in_order() {
        let specific = |n: &str| {
            route(
                n,
                vec![HttpMatch {
                    headers: vec![key("end-user", exact("jason"))],
                    ..Default::default()
                }],
            )
        };
        // Catch-all last: specific routes are reached first.
        let t = table(false, vec![specific("jason"), route("all", vec![])]);
        assert_eq!(
            pick(&t, &with_header(req("/"), "end-user", "jason")),
            "jason"
        );
        assert_eq!(pick(&t, &req("/")), "all");
        // Catch-all first (bookinfo fault-injection-details-v1): the later route is never reached.
        let t = table(false, vec![route("all", vec![]), specific("jason")]);
        assert_eq!(pick(&t, &with_header(req("/"), "end-user", "jason")), "all");
        assert_eq!(pick(&t, &req("/")), "all");
        // Two matching routes: the first one in table order.
        let t = table(
            false,
            vec![
                route(
                    "a",
                    vec![HttpMatch {
                        uri: prefix("/api"),
                        ..Default::default()
                    }],
                ),
                route(
                    "b",
                    vec![HttpMatch {
                        uri: exact("/api/v1"),
                        ..Default::default()
                    }],
                ),
            ],
        );
        assert_eq!(pick(&t, &req("/api/v1")), "a");
    }

    #[test]
    fn unmatched_virtual_service_vs_gateway_api() {
        let routes = || {
            vec![route(
                "p",
                vec![HttpMatch {
                    uri: exact("/productpage"),
                    ..Default::default()
                }],
            )]
        };
        let vs = table(false, routes());
        let gw = table(true, routes());
        assert_eq!(pick(&vs, &req("/productpage")), "p");
        assert_eq!(pick(&gw, &req("/productpage")), "p");
        assert_eq!(pick(&vs, &req("/other")), "<default>");
        assert_eq!(pick(&gw, &req("/other")), "<404>");
        assert_eq!(vs.unmatched(), Unmatched::WholeService);
        assert_eq!(gw.unmatched(), Unmatched::NotFound);
        // An empty table.
        assert_eq!(pick(&table(false, vec![]), &req("/")), "<default>");
        // No route attached to any port: the default route.
        assert_eq!(pick(&table(true, vec![]), &req("/")), "<default>");
        // Routes attached to another port of the Service (parentRef port) leave this one alone.
        let other_port = table(
            true,
            vec![route(
                "p",
                vec![HttpMatch {
                    uri: exact("/productpage"),
                    port: 8080,
                    ..Default::default()
                }],
            )],
        );
        assert_eq!(pick(&other_port, &req("/other")), "<default>");
        assert!(!other_port.covers_port(9080) && other_port.covers_port(8080));
        let mut on_port = req("/other");
        on_port.dst_port = 8080;
        assert_eq!(pick(&other_port, &on_port), "<404>");
    }

    #[test]
    fn uri_matches() {
        let uri = |m: Option<StringMatch>, ignore: bool| HttpMatch {
            uri: m,
            ignore_uri_case: ignore,
            ..Default::default()
        };
        #[rustfmt::skip]
        let cases: Vec<(HttpMatch, &str, bool)> = vec![
            (uri(exact("/productpage"), false), "/productpage", true),
            (uri(exact("/productpage"), false), "/productpage/", false),
            (uri(exact("/productpage"), false), "/ProductPage", false),
            (uri(exact("/productpage"), true), "/ProductPage", true),
            (uri(prefix("/static"), false), "/static/app.js", true),
            (uri(prefix("/static"), false), "/staticfoo", true), // Istio: plain string prefix
            (uri(prefix("/static"), false), "/Static/x", false),
            (uri(prefix("/static"), true), "/STATIC/x", true),
            (uri(prefix("/static"), false), "/stat", false),
            (uri(regex("/api/v[0-9]+/.*"), false), "/api/v1/products", true),
            (uri(regex("/api/v[0-9]+"), false), "/api/v1/products", false), // full match
            (uri(regex("/api/v[0-9]+"), false), "/x/api/v1", false),
            (uri(regex("/api/v[0-9]+"), true), "/API/v1", false), // ignoreUriCase: exact/prefix only
            (uri(regex("a|/b"), false), "a", true), // alternation stays anchored
            (uri(regex("a|/b"), false), "ab", false),
            (uri(None, false), "/anything", true),
        ];
        for (i, (m, path, want)) in cases.into_iter().enumerate() {
            assert_eq!(hits(m, &req(path)), want, "case {i}: {path}");
        }
    }

    #[test]
    fn gateway_api_path_prefix_by_segment() {
        let seg = |p: &str| HttpMatch {
            uri: prefix(p),
            uri_prefix_by_segment: true,
            ..Default::default()
        };
        #[rustfmt::skip]
        let cases = [
            ("/foo", "/foo", true), ("/foo", "/foo/bar", true), ("/foo", "/foobar", false),
            ("/foo/", "/foo", true), ("/foo/", "/foo/bar", true), ("/foo/", "/foobar", false),
            ("/", "/anything", true), ("/", "/", true),
        ];
        for (p, path, want) in cases {
            assert_eq!(hits(seg(p), &req(path)), want, "{p} vs {path}");
        }
    }

    #[test]
    fn header_matches_and_without_headers() {
        let h = |m: Option<StringMatch>| HttpMatch {
            headers: vec![key("end-user", m)],
            ..Default::default()
        };
        let wo = |m: Option<StringMatch>| HttpMatch {
            without_headers: vec![key("end-user", m)],
            ..Default::default()
        };
        let jason = with_header(req("/"), "end-user", "jason");
        let jasonx = with_header(req("/"), "end-user", "jason-x");
        let none = req("/");
        let empty = with_header(req("/"), "end-user", "");
        #[rustfmt::skip]
        let cases: Vec<(HttpMatch, &RequestInfo, bool)> = vec![
            (h(exact("jason")), &jason, true),
            (h(exact("jason")), &jasonx, false),
            (h(exact("jason")), &none, false),
            (h(exact("Jason")), &jason, false), // values are case-sensitive
            (h(prefix("jas")), &jasonx, true),
            (h(prefix("jas")), &none, false),
            (h(regex("jason(-.*)?")), &jasonx, true),
            (h(regex("jason")), &jasonx, false), // full match
            (h(present()), &jason, true),
            (h(present()), &empty, true),
            (h(present()), &none, false),
            (h(None), &jason, true), // no StringMatch at all = presence
            // withoutHeaders: the request must NOT match.
            (wo(exact("jason")), &jason, false),
            (wo(exact("jason")), &jasonx, true),
            (wo(exact("jason")), &none, true),
            (wo(present()), &none, true),
            (wo(present()), &jason, false),
            (wo(regex("jas.*")), &jasonx, false),
        ];
        for (i, (m, r, want)) in cases.into_iter().enumerate() {
            assert_eq!(hits(m, r), want, "case {i}");
        }
        // A header sent twice is matched as "a,b" (Envoy).
        let twice = with_header(with_header(req("/"), "x-v", "a"), "x-v", "b");
        let m = HttpMatch {
            headers: vec![key("x-v", exact("a,b"))],
            ..Default::default()
        };
        assert!(hits(m, &twice));
    }

    #[test]
    fn query_param_matches() {
        let q = |m: Option<StringMatch>| HttpMatch {
            query_params: vec![key("version", m)],
            ..Default::default()
        };
        let v2 = with_query(req("/"), "version", "v2");
        let v20 = with_query(req("/"), "version", "v20");
        let flag = with_query(req("/"), "version", "");
        let none = with_query(req("/"), "other", "v2");
        let first = with_query(with_query(req("/"), "version", "v1"), "version", "v2");
        #[rustfmt::skip]
        let cases: Vec<(HttpMatch, &RequestInfo, bool)> = vec![
            (q(exact("v2")), &v2, true),
            (q(exact("v2")), &v20, false),
            (q(exact("v2")), &none, false),
            (q(regex("v[0-9]")), &v2, true),
            (q(regex("v[0-9]")), &v20, false),
            (q(present()), &flag, true),
            (q(present()), &v2, true),
            (q(present()), &none, false),
            (q(exact("v2")), &first, false), // the first occurrence counts (Envoy)
        ];
        for (i, (m, r, want)) in cases.into_iter().enumerate() {
            assert_eq!(hits(m, r), want, "case {i}");
        }
    }

    #[test]
    fn method_authority_scheme_port() {
        let mut post = req("/");
        post.method = "POST".into();
        let method = |m| HttpMatch {
            method: m,
            ..Default::default()
        };
        assert!(hits(method(exact("POST")), &post));
        assert!(!hits(method(exact("POST")), &req("/")));
        assert!(!hits(method(exact("post")), &post));
        assert!(hits(method(regex("POST|PUT")), &post));

        let authority = |m| HttpMatch {
            authority: m,
            ..Default::default()
        };
        // Matched against the authority as sent, port included (Envoy's `:authority` matcher).
        assert!(hits(authority(exact("reviews:9080")), &req("/")));
        assert!(!hits(authority(exact("reviews")), &req("/")));
        assert!(hits(authority(prefix("reviews")), &req("/")));
        assert!(hits(authority(regex("reviews(:[0-9]+)?")), &req("/")));
        let mut no_authority = req("/");
        no_authority.authority.clear();
        assert!(!hits(authority(prefix("reviews")), &no_authority));
        assert!(hits(authority(None), &no_authority));
        // The same through a `:authority` header match (Istio's translation of `authority`).
        let pseudo = |n: &str, m| HttpMatch {
            headers: vec![key(n, m)],
            ..Default::default()
        };
        assert!(hits(pseudo(":authority", exact("reviews:9080")), &req("/")));
        assert!(!hits(pseudo(":authority", present()), &no_authority));
        assert!(hits(pseudo(":method", exact("GET")), &req("/")));

        let scheme = |m| HttpMatch {
            scheme: m,
            ..Default::default()
        };
        assert!(hits(scheme(exact("http")), &req("/")));
        assert!(!hits(scheme(exact("https")), &req("/")));

        let port = |p| HttpMatch {
            port: p,
            ..Default::default()
        };
        assert!(hits(port(9080), &req("/")));
        assert!(!hits(port(8080), &req("/")));
        assert!(hits(port(0), &req("/")));
    }

    #[test]
    fn source_labels_and_namespace() {
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut client = req("/");
        client.src_labels = labels(&[("app", "productpage"), ("version", "v1")]);
        let sl = |kv: &[(&str, &str)]| HttpMatch {
            source_labels: labels(kv).into_iter().collect(),
            ..Default::default()
        };
        assert!(hits(sl(&[("app", "productpage")]), &client));
        assert!(hits(
            sl(&[("app", "productpage"), ("version", "v1")]),
            &client
        ));
        assert!(!hits(
            sl(&[("app", "productpage"), ("version", "v2")]),
            &client
        ));
        assert!(!hits(sl(&[("team", "x")]), &client));
        assert!(!hits(sl(&[("app", "productpage")]), &req("/")));
        assert!(hits(sl(&[]), &req("/")));

        let ns = |n: &str| HttpMatch {
            source_namespace: n.into(),
            ..Default::default()
        };
        assert!(hits(ns("default"), &client));
        assert!(!hits(ns("other"), &client));
        let mut unknown = req("/");
        unknown.src_namespace.clear();
        assert!(!hits(ns("default"), &unknown));
    }

    #[test]
    fn and_within_block_or_across_blocks() {
        let block = HttpMatch {
            uri: prefix("/api"),
            method: exact("GET"),
            headers: vec![key("end-user", exact("jason"))],
            ..Default::default()
        };
        let t = table(true, vec![route("r", vec![block])]);
        let ok = with_header(req("/api/x"), "end-user", "jason");
        assert_eq!(pick(&t, &ok), "r");
        assert_eq!(pick(&t, &req("/api/x")), "<404>"); // header missing
        let mut post = ok.clone();
        post.method = "POST".into();
        assert_eq!(pick(&t, &post), "<404>"); // method differs
        assert_eq!(
            pick(&t, &with_header(req("/x"), "end-user", "jason")),
            "<404>"
        );

        // Blocks ORed.
        let t = table(
            true,
            vec![route(
                "r",
                vec![
                    HttpMatch {
                        uri: exact("/a"),
                        ..Default::default()
                    },
                    HttpMatch {
                        headers: vec![key("x-canary", present())],
                        ..Default::default()
                    },
                ],
            )],
        );
        assert_eq!(pick(&t, &req("/a")), "r");
        assert_eq!(pick(&t, &with_header(req("/b"), "x-canary", "1")), "r");
        assert_eq!(pick(&t, &req("/b")), "<404>");
    }

    #[test]
    fn bad_regex_rejected_with_context() {
        let bad = |m: HttpMatch| {
            let mut r = route("jason-route", vec![HttpMatch::default(), m]);
            r.origin = Some(Origin {
                object: "VirtualService/default/reviews".into(),
                rule: 3,
                r#match: 1,
            });
            let e = CompiledTable::new(RouteTable {
                host: "reviews.default.svc.cluster.local".into(),
                http: vec![route("ok", vec![]), r],
                ..Default::default()
            })
            .expect_err("bad regex");
            e.to_string()
        };
        let msg = bad(HttpMatch {
            headers: vec![key("end-user", regex("(jason"))],
            ..Default::default()
        });
        assert!(
            msg.starts_with(
                "route table reviews.default.svc.cluster.local: route #1 \"jason-route\" \
                 (VirtualService/default/reviews rule 3): match 1 headers[\"end-user\"]: \
                 invalid regex \"(jason\": "
            ),
            "{msg}"
        );
        for (m, field) in [
            (
                HttpMatch {
                    uri: regex("[a-"),
                    ..Default::default()
                },
                "uri",
            ),
            (
                HttpMatch {
                    method: regex("*"),
                    ..Default::default()
                },
                "method",
            ),
            (
                HttpMatch {
                    authority: regex("a{2,1}"),
                    ..Default::default()
                },
                "authority",
            ),
            (
                HttpMatch {
                    query_params: vec![key("v", regex("("))],
                    ..Default::default()
                },
                "query_params[\"v\"]",
            ),
            (
                HttpMatch {
                    without_headers: vec![key("x", regex(")"))],
                    ..Default::default()
                },
                "without_headers[\"x\"]",
            ),
        ] {
            let msg = bad(m);
            assert!(
                msg.contains(&format!("match 1 {field}: invalid regex")),
                "{msg}"
            );
        }
    }

    #[test]
    fn tcp_routes() {
        let l4 = |subnets: &[&str], port: u32, ns: &str, labels: &[(&str, &str)]| L4Match {
            destination_subnets: subnets.iter().map(|s| s.to_string()).collect(),
            port,
            source_namespace: ns.into(),
            source_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let tcp = |name: &str, matches: Vec<L4Match>| TcpRoute {
            origin: Some(Origin {
                object: name.into(),
                ..Default::default()
            }),
            matches,
            ..Default::default()
        };
        let t = CompiledTable::new(RouteTable {
            host: "db.default.svc.cluster.local".into(),
            tcp: vec![
                tcp(
                    "from-canary-pods",
                    vec![L4Match {
                        source_subnet: "10.244.9.0/24".into(),
                        ..Default::default()
                    }],
                ),
                tcp(
                    "subnet",
                    vec![l4(&["10.96.0.0/16", "fd00::/8"], 0, "", &[])],
                ),
                tcp(
                    "port-or-ns",
                    vec![l4(&[], 5432, "", &[]), l4(&[], 0, "batch", &[])],
                ),
                tcp("labels", vec![l4(&[], 0, "", &[("app", "etl")])]),
                tcp("exact-ip", vec![l4(&["192.168.1.7"], 0, "", &[])]),
            ],
            ..Default::default()
        })
        .expect("compiles");
        let etl = BTreeMap::from([("app".to_string(), "etl".to_string())]);
        let none = BTreeMap::new();
        let sel = |ip: &str, port: u16, ns: &str, labels: &BTreeMap<String, String>| {
            let conn = TcpInfo {
                dst_ip: ip.parse().expect("ip"),
                dst_port: port,
                src_ip: Some("10.244.1.5".parse().expect("ip")),
                src_namespace: ns,
                src_labels: labels,
            };
            t.select_tcp(&conn)
                .and_then(|(i, r)| {
                    assert_eq!(&t.table().tcp[i], r);
                    r.origin.as_ref().map(|o| o.object.clone())
                })
                .unwrap_or_else(|| "<default>".into())
        };
        assert_eq!(sel("10.96.3.4", 3306, "default", &none), "subnet");
        assert_eq!(sel("fd12::1", 3306, "default", &none), "subnet");
        assert_eq!(sel("10.97.0.1", 5432, "default", &none), "port-or-ns");
        assert_eq!(sel("10.97.0.1", 3306, "batch", &none), "port-or-ns");
        assert_eq!(sel("10.97.0.1", 3306, "default", &etl), "labels");
        assert_eq!(sel("192.168.1.7", 3306, "default", &none), "exact-ip");
        assert_eq!(sel("192.168.1.8", 3306, "default", &none), "<default>");
        // sourceSubnet: the client's IP; unknown never matches.
        for (src, want) in [
            (Some("10.244.9.77"), Some(0)),
            (Some("10.244.1.5"), None),
            (None, None),
        ] {
            let conn = TcpInfo {
                dst_ip: "192.168.1.8".parse().expect("ip"),
                dst_port: 3306,
                src_ip: src.map(|s| s.parse().expect("ip")),
                src_namespace: "default",
                src_labels: &none,
            };
            assert_eq!(t.select_tcp(&conn).map(|(i, _)| i), want, "{src:?}");
        }
        // A catch-all tcp route.
        let all = CompiledTable::new(RouteTable {
            tcp: vec![tcp("all", vec![]), tcp("never", vec![])],
            ..Default::default()
        })
        .expect("compiles");
        let conn = TcpInfo {
            dst_ip: "1.2.3.4".parse().expect("ip"),
            dst_port: 1,
            src_ip: None,
            src_namespace: "",
            src_labels: &none,
        };
        assert_eq!(all.select_tcp(&conn).map(|(i, _)| i), Some(0));
        assert!(table(false, vec![]).select_tcp(&conn).is_none());
    }

    #[test]
    fn subnets() {
        let s = |v: &str| Subnet::parse(v);
        let has = |net: &str, ip: &str| s(net).expect("subnet").contains(ip.parse().expect("ip"));
        assert!(has("0.0.0.0/0", "8.8.8.8"));
        assert!(!has("0.0.0.0/0", "::1"));
        assert!(has("::/0", "::1"));
        assert!(has("10.0.0.0/8", "10.255.0.1"));
        assert!(!has("10.0.0.0/8", "11.0.0.1"));
        assert!(has("10.1.2.3/32", "10.1.2.3"));
        assert!(!has("10.1.2.3", "10.1.2.4"));
        assert!(has("2001:db8::/32", "2001:db8:1::1"));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", ""] {
            assert!(s(bad).is_none(), "{bad}");
        }
        let e = CompiledTable::new(RouteTable {
            host: "db.default.svc.cluster.local".into(),
            tcp: vec![TcpRoute {
                matches: vec![L4Match {
                    destination_subnets: vec!["10.0.0.0/40".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect_err("bad subnet");
        assert_eq!(
            e.to_string(),
            "route table db.default.svc.cluster.local: tcp route #0: match 0 \
             destination_subnets: invalid subnet \"10.0.0.0/40\" (want an IP or IP/prefix)"
        );
        let e = CompiledTable::new(RouteTable {
            host: "db.default.svc.cluster.local".into(),
            tcp: vec![TcpRoute {
                matches: vec![L4Match {
                    source_subnet: "10.0.0.300".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect_err("bad source subnet");
        assert!(
            e.to_string()
                .contains("match 0 source_subnet: invalid subnet \"10.0.0.300\""),
            "{e}"
        );
    }

    #[test]
    fn regex_rewrites_replace_every_match() {
        let rw = |pattern: &str, substitution: &str| HttpRoute {
            rewrite: Some(mesh_common::proto::config::Rewrite {
                regex_match: pattern.into(),
                regex_substitution: substitution.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // (pattern, substitution in regex-crate syntax, path, want) — Envoy's documented examples.
        let cases = [
            (
                "^/service/([^/]+)(/.*)$",
                "${2}/instance/${1}",
                "/service/foo/v1/api",
                "/v1/api/instance/foo",
            ),
            ("one", "two", "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz"),
            ("(?i)/xxx/", "/yyy/", "/aaa/XxX/bbb", "/aaa/yyy/bbb"),
            ("^/no-match$", "/x", "/kept", "/kept"),
            ("/a", "$$/", "/a/b", "$//b"),
        ];
        for (pattern, substitution, path, want) in cases {
            let t = table(false, vec![rw(pattern, substitution)]);
            let r = t.regex_rewrite(0).expect("compiled");
            assert_eq!(r.apply(path), want, "{pattern} {substitution} {path}");
        }
        assert!(
            table(false, vec![HttpRoute::default()])
                .regex_rewrite(0)
                .is_none()
        );
        let e = CompiledTable::new(RouteTable {
            host: "reviews.default.svc.cluster.local".into(),
            http: vec![rw("(", "x")],
            ..Default::default()
        })
        .expect_err("bad regex");
        assert!(
            e.to_string().starts_with(
                "route table reviews.default.svc.cluster.local: route #0: rewrite regex_match: invalid regex \"(\""
            ),
            "{e}"
        );
    }
}
