//! Path normalisation before routing, as Istio configures Envoy by default
//! (`meshConfig.pathNormalization: BASE` = Envoy `normalize_path: true`): RFC 3986 §5.2.4
//! dot-segment removal, with `%2e`/`%2E` counted as `.` and `\` as `/` (the URL canonicaliser
//! Envoy uses does both). Slashes are not merged and other percent-escapes are kept (that is what
//! `MERGE_SLASHES` / `DECODE_AND_MERGE_SLASHES` would add). The normalised path is both what routes
//! match and what goes upstream, so `/public/../admin` cannot reach a route for `/public` only.
use std::borrow::Cow;

/// The normalised form of a request path (without the query); `Cow::Borrowed` when unchanged.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let needs = path.contains('\\')
        || path.contains("%2e")
        || path.contains("%2E")
        || path.split('/').any(|s| s == "." || s == "..");
    // `*` (OPTIONS *) and anything not origin-form is left alone.
    if !needs || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let unified = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = unified.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match dots(seg) {
            Some(1) => trailing_slash = i == last,
            Some(2) => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(unified.len() + 1);
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Cow::Owned(s)
}

/// 1 for a `.` segment, 2 for `..` (either possibly percent-encoded), else None.
fn dots(seg: &str) -> Option<usize> {
    let mut n = 0;
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && matches!(b.get(i + 2), Some(b'e' | b'E'))
        {
            i += 3;
        } else {
            return None;
        }
        n += 1;
    }
    (n == 1 || n == 2).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a//b", "/a//b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/public/../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a\\..\\b", "/b"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a%2e/b", "/a%2e/b"),
            ("*", "*"),
        ] {
            assert_eq!(normalize(input), want, "{input}");
        }
        assert!(matches!(normalize("/a/b"), Cow::Borrowed(_)));
    }
}
