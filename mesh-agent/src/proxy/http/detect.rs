//! Protocol sniffing for ports whose protocol is not declared (Envoy's http_inspector): the first
//! bytes the client sends tell HTTP/1.x (a request line's method), HTTP/2 (the connection
//! preface) or anything else (opaque TCP). A client that sends nothing within the timeout is
//! treated as TCP (server-first protocols such as MySQL or SMTP).
use std::time::Duration;

use tokio::net::TcpStream;

/// How long to wait for the client's first bytes (Istio's historical default).
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tcp,
}

/// Classifies the bytes seen so far; `None` = could still be HTTP, need more.
pub fn classify(b: &[u8]) -> Option<Detected> {
    if b.is_empty() {
        return None;
    }
    let mut undecided = false;
    for (proto, sig) in std::iter::once((Detected::Http2, H2_PREFACE))
        .chain(METHODS.iter().map(|m| (Detected::Http1, *m)))
    {
        let n = b.len().min(sig.len());
        if b[..n] == sig[..n] {
            if b.len() >= sig.len() {
                return Some(proto);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Tcp) }
}

/// Peeks at the client's first bytes (never consuming them).
pub async fn sniff(s: &TcpStream, timeout: Duration) -> Detected {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Detected::Tcp,
        };
        if n == 0 {
            return Detected::Tcp;
        }
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == last {
            // No new bytes yet: peek returns immediately while data is queued, so wait a little.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
        if tokio::time::Instant::now() >= deadline {
            return Detected::Tcp;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"", None),
            (b"G", None),
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST /x HTTP/1.1", Some(Detected::Http1)),
            (b"DELETE ", Some(Detected::Http1)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Detected::Http2)),
            (b"PRI * HTTP/2", None),
            (b"P", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tcp)),
            (b"SSH-2.0-OpenSSH", Some(Detected::Tcp)),
            (b"GETX", Some(Detected::Tcp)),
            (b"get / HTTP/1.1", Some(Detected::Tcp)),
        ];
        for (b, want) in cases {
            assert_eq!(classify(b), *want, "{:?}", String::from_utf8_lossy(b));
        }
    }
}
