//! The request attributes route matching looks at, extracted once per request.
use std::collections::BTreeMap;

/// What [`super::route::CompiledTable::select`] matches on.
///
/// Built by [`RequestInfo::from_parts`]; the fields are public so tests (and callers holding a
/// request in another shape) can build one directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `GET`, `POST`, … as sent (Envoy matches `:method` case-sensitively).
    pub method: String,
    /// `http` unless the request URI says otherwise (the node proxy sees plaintext HTTP).
    pub scheme: String,
    /// The path without the query string, as received (not normalised, not percent-decoded).
    pub path: String,
    /// Query parameters in order, names and values percent-decoded (`+` is kept as is).
    pub query: Vec<(String, String)>,
    /// The query string as received, without the `?` ("" when none).
    pub raw_query: String,
    /// Header values by lower-case name, in order; one entry per header line.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `:authority` (HTTP/2, absolute-form URI) or else the `Host` header, as sent (with the port
    /// if the client wrote one). Empty if neither is present.
    pub authority: String,
    /// The port the client connected to (the original destination port).
    pub dst_port: u16,
    /// The client workload's namespace ("" when unknown, e.g. not a pod).
    pub src_namespace: String,
    /// The client workload's pod labels.
    pub src_labels: BTreeMap<String, String>,
}

impl RequestInfo {
    /// Extracts the attributes of a request (`http::Request::into_parts().0` or `req.parts()`-like),
    /// with what the proxy knows about the connection: the original destination port and the client
    /// workload.
    pub fn from_parts(
        parts: &http::request::Parts,
        dst_port: u16,
        src_ns: &str,
        src_labels: &BTreeMap<String, String>,
    ) -> RequestInfo {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &parts.headers {
            // `http::HeaderName`s are already lower-case.
            headers
                .entry(name.as_str().to_string())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str().to_string(),
            None => parts
                .headers
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        RequestInfo {
            method: parts.method.as_str().to_string(),
            scheme: parts.uri.scheme_str().unwrap_or("http").to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(parse_query).unwrap_or_default(),
            raw_query: parts.uri.query().unwrap_or_default().to_string(),
            headers,
            authority,
            dst_port,
            src_namespace: src_ns.to_string(),
            src_labels: src_labels.clone(),
        }
    }

    /// The header's values joined with `,` (how Envoy matches a header sent several times), or
    /// `None` when absent. The pseudo-headers `:authority`, `:method`, `:path` (with the query)
    /// and `:scheme` are answered from the request line.
    pub fn header(&self, name: &str) -> Option<String> {
        match name {
            ":authority" => (!self.authority.is_empty()).then(|| self.authority.clone()),
            ":method" => Some(self.method.clone()),
            ":scheme" => Some(self.scheme.clone()),
            ":path" if self.raw_query.is_empty() => Some(self.path.clone()),
            ":path" => Some(format!("{}?{}", self.path, self.raw_query)),
            _ => self.headers.get(name).map(|v| v.join(",")),
        }
    }

    /// The first value of a query parameter (Envoy matches the first occurrence).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `a=1&b&c=%2F` → `[("a","1"), ("b",""), ("c","/")]`; empty pieces are skipped.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Decodes `%XX` escapes; a malformed escape is kept literally; invalid UTF-8 is replaced.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn from_parts_http1() {
        let p = parts(
            http::Request::get("/a/b?x=1&y=%2Fz&flag&x=2")
                .header("Host", "reviews:9080")
                .header("End-User", "jason")
                .header("accept", "a")
                .header("accept", "b")
                .body(())
                .unwrap(),
        );
        let labels = BTreeMap::from([("app".to_string(), "productpage".to_string())]);
        let r = RequestInfo::from_parts(&p, 9080, "default", &labels);
        assert_eq!(r.method, "GET");
        assert_eq!(r.scheme, "http");
        assert_eq!(r.path, "/a/b");
        assert_eq!(
            r.query,
            vec![
                ("x".into(), "1".into()),
                ("y".into(), "/z".into()),
                ("flag".into(), "".into()),
                ("x".into(), "2".into()),
            ]
        );
        assert_eq!(r.query_param("x"), Some("1"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.header("end-user").as_deref(), Some("jason"));
        assert_eq!(r.header("accept").as_deref(), Some("a,b"));
        assert_eq!(r.authority, "reviews:9080");
        assert_eq!(r.header(":authority").as_deref(), Some("reviews:9080"));
        assert_eq!(r.header(":method").as_deref(), Some("GET"));
        assert_eq!(r.header(":scheme").as_deref(), Some("http"));
        assert_eq!(
            r.header(":path").as_deref(),
            Some("/a/b?x=1&y=%2Fz&flag&x=2")
        );
        assert_eq!(r.dst_port, 9080);
        assert_eq!(r.src_namespace, "default");
        assert_eq!(r.src_labels, labels);
    }

    #[test]
    fn authority_from_uri_wins() {
        let p = parts(
            http::Request::get("http://ratings.default:9080/x")
                .header("host", "other")
                .body(())
                .unwrap(),
        );
        let r = RequestInfo::from_parts(&p, 9080, "", &BTreeMap::new());
        assert_eq!(r.authority, "ratings.default:9080");
        assert_eq!(r.path, "/x");
        assert!(r.query.is_empty());
    }

    #[test]
    fn malformed_percent_kept() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%41"), "A");
    }
}
