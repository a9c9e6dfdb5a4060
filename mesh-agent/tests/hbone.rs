//! HBONE over real sockets on 127.0.0.0/8 (root: the pod context's netns worker enters this test's
//! own netns): our pooled client through our `:15008` server to an echo app; an independent
//! h2 client (not our proxy) checks the wire protocol and the documented status codes; every kind
//! of bad peer certificate is refused.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use mesh_agent::{
    hbone::{
        AllowAll, BoxFuture, CertSource, InboundConn, InboundPolicy,
        client::{Pool, Target},
        copy,
        server::Server,
        tls,
    },
    metrics::Metrics,
    pods::worker::NetnsWorker,
    proxy::PodCtx,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

const CLIENT: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/b/sa/server";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    let der = cert.der().clone();
    Ca {
        issuer: Issuer::new(p, key),
        der,
    }
}

fn leaf(ca: &Ca, uri: &str, expired: bool) -> Arc<CertifiedKey> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    if expired {
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    } else {
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::hours(1);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let provider = tls::provider();
    let k = provider
        .key_provider
        .load_private_key(PrivateKeyDer::try_from(key.serialize_der()).unwrap())
        .unwrap();
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], k))
}

struct Certs {
    roots: Arc<RootCertStore>,
    by_id: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSource for Certs {
    fn cert<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Arc<CertifiedKey>, String>> {
        let r = self
            .by_id
            .get(identity)
            .cloned()
            .ok_or_else(|| format!("no certificate for {identity}"));
        Box::pin(async move { r })
    }
    fn roots(&self) -> Option<Arc<RootCertStore>> {
        Some(self.roots.clone())
    }
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.der.clone()).unwrap();
    Arc::new(r)
}

fn pod(ip: Ipv4Addr, name: &str) -> Arc<PodCtx> {
    let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
    Arc::new(PodCtx {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "t".into(),
        ip,
        netns_cookie: 0,
        worker: NetnsWorker::spawn(ns, name).expect("entering our own netns needs root"),
        metrics: Metrics::new(),
        cancel: tokio_util::sync::CancellationToken::new(),
        pool: std::sync::Mutex::new(Vec::new()),
        refilling: std::sync::atomic::AtomicBool::new(false),
        identity: format!("spiffe://cluster.local/ns/t/sa/{name}"),
        workload: name.into(),
        conns: Arc::default(),
        tunnel: None,
        http: Default::default(),
    })
}

/// An echo app on 127.0.0.1 (the server connects to the app over loopback).
async fn echo_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Accepts any server certificate (for the no-client-certificate case only).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct DenyFrom(&'static str);

impl InboundPolicy for DenyFrom {
    fn check(&self, c: &InboundConn) -> Result<(), String> {
        if c.src_identity == self.0 {
            Err("denied by test policy".into())
        } else {
            Ok(())
        }
    }
}

/// A server pod on `ip` with the SERVER identity; returns its `:15008`-equivalent address.
async fn server(ca: &Ca, ip: Ipv4Addr, policy: Arc<dyn InboundPolicy>) -> SocketAddr {
    let certs = Arc::new(Certs {
        roots: roots(ca),
        by_id: HashMap::from([(SERVER.to_string(), leaf(ca, SERVER, false))]),
    });
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let s = Server::new(pod(ip, "server"), SERVER.into(), certs, policy);
    tokio::spawn(s.serve(l));
    addr
}

/// An independent HBONE client: plain h2 over our TLS config (or any rustls config).
async fn raw_connect(
    via: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: http::Method,
    authority: &str,
) -> Result<(u16, Option<(h2::SendStream<Bytes>, h2::RecvStream)>), String> {
    let tcp = tokio::net::TcpStream::connect(via)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(via.ip().into()), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method(method)
        .uri(authority)
        .header("forwarded", "for=\"10.0.0.1\"")
        .body(())
        .unwrap();
    let (resp, stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| format!("response: {e}"))?;
    let status = resp.status().as_u16();
    Ok((status, (status == 200).then(|| (stream, resp.into_body()))))
}

async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpStream::connect(l.local_addr().unwrap());
    let (a, b) = tokio::join!(a, l.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Sends `payload` through a CONNECT stream (via copy::bidi, as the proxy does) and returns the echo.
async fn through(send: h2::SendStream<Bytes>, recv: h2::RecvStream, payload: Vec<u8>) -> Vec<u8> {
    let (mut app, proxy_side) = tcp_pair().await;
    let copy = tokio::spawn(copy::bidi(proxy_side, send, recv));
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    let mut got = vec![];
    tokio::time::timeout(Duration::from_secs(10), app.read_to_end(&mut got))
        .await
        .expect("echo within 10 s")
        .unwrap();
    let c = copy.await.unwrap();
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.sent, payload.len() as u64);
    got
}

#[tokio::test]
async fn pooled_client_through_server_to_app() {
    let ca = ca("root");
    let app = echo_app().await;
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let via = server(&ca, ip, Arc::new(AllowAll)).await;
    let certs = Certs {
        roots: roots(&ca),
        by_id: HashMap::from([(CLIENT.to_string(), leaf(&ca, CLIENT, false))]),
    };
    let client_pod = pod(Ipv4Addr::LOCALHOST, "client");
    let pool = Pool::default();
    let target = Target {
        via,
        authority: SocketAddr::new(ip.into(), app),
        identity: SERVER.into(),
    };
    // 8 concurrent streams, 1 MiB each way, all on one pooled connection.
    let mut tasks = vec![];
    for i in 0..8u8 {
        let t = pool
            .connect(
                &client_pod,
                CLIENT,
                &certs,
                &target,
                &[("forwarded", "for=\"127.0.0.1\"".into())],
            )
            .await
            .unwrap();
        let payload: Vec<u8> = (0..1 << 20)
            .map(|j: u32| (j as u8).wrapping_add(i))
            .collect();
        tasks.push(tokio::spawn(async move {
            let got = through(t.send, t.recv, payload.clone()).await;
            assert_eq!(got, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conns = pool.connections();
    assert_eq!(conns.len(), 1, "multiplexed on one connection: {conns:?}");
    assert_eq!(conns[0].4, 0, "every stream slot released");

    // Expecting another identity than the server presents fails on the client side.
    let wrong = Target {
        identity: "spiffe://cluster.local/ns/b/sa/other".into(),
        ..target.clone()
    };
    let err = pool
        .connect(&client_pod, CLIENT, &certs, &wrong, &[])
        .await
        .err()
        .expect("wrong server identity refused");
    assert!(err.to_string().contains("not the expected"), "{err}");
}

#[tokio::test]
async fn interop_status_codes() {
    let ca = ca("root");
    let app = echo_app().await;
    let ip = Ipv4Addr::new(127, 0, 0, 3);
    let denied = "spiffe://cluster.local/ns/a/sa/denied";
    let via = server(&ca, ip, Arc::new(DenyFrom(denied))).await;
    let cfg = |id: &str| {
        tls::client_config(leaf(&ca, id, false), roots(&ca), vec![SERVER.into()]).unwrap()
    };

    // 200 and data both ways.
    let (st, streams) = raw_connect(
        via,
        cfg(CLIENT),
        http::Method::CONNECT,
        &format!("{ip}:{app}"),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    let (send, recv) = streams.unwrap();
    assert_eq!(through(send, recv, b"hello".to_vec()).await, b"hello");

    // 401: the policy denies this identity.
    let (st, _) = raw_connect(
        via,
        cfg(denied),
        http::Method::CONNECT,
        &format!("{ip}:{app}"),
    )
    .await
    .unwrap();
    assert_eq!(st, 401);

    // 503: nothing listens on that port of the pod.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (st, _) = raw_connect(
        via,
        cfg(CLIENT),
        http::Method::CONNECT,
        &format!("{ip}:{port}"),
    )
    .await
    .unwrap();
    assert_eq!(st, 503);

    // 400: the authority is not this pod; a GET is not a CONNECT.
    let (st, _) = raw_connect(
        via,
        cfg(CLIENT),
        http::Method::CONNECT,
        &format!("127.0.0.9:{app}"),
    )
    .await
    .unwrap();
    assert_eq!(st, 400);
    let (st, _) = raw_connect(
        via,
        cfg(CLIENT),
        http::Method::GET,
        &format!("http://{ip}:{app}/"),
    )
    .await
    .unwrap();
    assert_eq!(st, 400);
}

#[tokio::test]
async fn bad_client_certificates_are_refused() {
    let ca1 = ca("root");
    let other = ca("another mesh");
    let app = echo_app().await;
    let ip = Ipv4Addr::new(127, 0, 0, 4);
    let via = server(&ca1, ip, Arc::new(AllowAll)).await;
    let authority = format!("{ip}:{app}");
    let refused = |r: Result<(u16, Option<_>), String>, what: &str| match r {
        Err(_) => {}
        Ok((st, _)) => panic!("{what}: expected the handshake to fail, got HTTP {st}"),
    };

    // No client certificate at all.
    let provider = tls::provider();
    let mut no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    // (the server's certificate is not what this case is about)
    no_cert
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyServer));
    refused(
        raw_connect(via, Arc::new(no_cert), http::Method::CONNECT, &authority).await,
        "no client certificate",
    );
    // A certificate from another trust root.
    refused(
        raw_connect(
            via,
            tls::client_config(
                leaf(&other, CLIENT, false),
                roots(&ca1),
                vec![SERVER.into()],
            )
            .unwrap(),
            http::Method::CONNECT,
            &authority,
        )
        .await,
        "foreign root",
    );
    // An expired certificate.
    refused(
        raw_connect(
            via,
            tls::client_config(leaf(&ca1, CLIENT, true), roots(&ca1), vec![SERVER.into()]).unwrap(),
            http::Method::CONNECT,
            &authority,
        )
        .await,
        "expired",
    );
    // A valid chain but another trust domain in the SAN.
    refused(
        raw_connect(
            via,
            tls::client_config(
                leaf(&ca1, "spiffe://evil.example/ns/a/sa/client", false),
                roots(&ca1),
                vec![SERVER.into()],
            )
            .unwrap(),
            http::Method::CONNECT,
            &authority,
        )
        .await,
        "other trust domain",
    );
    // Sanity: the same server accepts a good client.
    let (st, _) = raw_connect(
        via,
        tls::client_config(leaf(&ca1, CLIENT, false), roots(&ca1), vec![SERVER.into()]).unwrap(),
        http::Method::CONNECT,
        &authority,
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
}
