//! The `kube` source against a scripted mock API server with real list/watch semantics: paged list
//! with a resourceVersion, watch from it, events, a bookmark, a watch that ends and resumes from the
//! bookmark's resourceVersion, `410 Gone` → relist (objects deleted meanwhile disappear), kinds that
//! are not served (CRDs not installed) treated as empty. Also TokenReview, the CA Secret and status
//! writes through the same mock.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
};
use mesh_controller::{
    auth::{NodeAuth, TokenReviewAuth},
    model::{Model, Store},
    sources::kube as ksrc,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

type Body = BoxBody<Bytes, Infallible>;
type FrameTx = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

#[derive(Default)]
struct Mock {
    /// `METHOD path?query` of every request.
    log: Mutex<Vec<String>>,
    pod_watches: Mutex<u32>,
    /// Released by the test to let the second pod watch answer 410 Gone.
    gone: Notify,
    /// Watch streams held open until the test ends.
    open: Mutex<Vec<FrameTx>>,
    secret: Mutex<Option<Value>>,
    patches: Mutex<Vec<(String, String, Value)>>,
}

fn pod(name: &str, rv: u32, node: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"),
                        "resourceVersion": rv.to_string(), "labels": {"version": version},
                        "managedFields": [{"manager": "kubectl"}]},
           "spec": {"nodeName": node, "serviceAccountName": "web", "containers": []},
           "status": {"phase": "Running", "podIP": "10.244.1.9"}})
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn list(kind: &str, rv: u32, items: Vec<Value>) -> Response<Body> {
    full(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": format!("{kind}List"),
               "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn not_found() -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
    )
}

impl Mock {
    /// A watch response: `events` now, then either the end of the stream or (hold) kept open.
    fn watch(&self, events: Vec<Value>, hold: bool) -> Response<Body> {
        let (tx, rx) = mpsc::channel(16);
        for e in events {
            tx.try_send(Ok(Frame::data(Bytes::from(format!("{e}\n")))))
                .unwrap();
        }
        if hold {
            self.open.lock().unwrap().push(tx);
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::BodyExt::boxed(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
            .unwrap()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        self.log
            .lock()
            .unwrap()
            .push(format!("{method} {path}?{query}"));
        let watching = query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        let body: Value = {
            let b = req.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&b).unwrap_or(Value::Null)
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/api/v1/pods") if !watching => {
                if *self.pod_watches.lock().unwrap() < 2 {
                    list(
                        "Pod",
                        100,
                        vec![pod("a", 90, "node-a", "v1"), pod("b", 91, "node-b", "v1")],
                    )
                } else {
                    // The relist after 410: a and b were deleted while the watch was down.
                    list(
                        "Pod",
                        200,
                        vec![pod("c", 101, "node-a", "v1"), pod("d", 180, "node-b", "v2")],
                    )
                }
            }
            ("GET", "/api/v1/pods") => {
                let n = {
                    let mut n = self.pod_watches.lock().unwrap();
                    *n += 1;
                    *n
                };
                match n {
                    1 => self.watch(
                        vec![
                            json!({"type": "ADDED", "object": pod("c", 101, "node-a", "v1")}),
                            json!({"type": "MODIFIED", "object": pod("a", 102, "node-a", "v2")}),
                            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "150"}}}),
                        ],
                        false,
                    ),
                    2 => {
                        self.gone.notified().await;
                        self.watch(
                            vec![json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Failure", "reason": "Expired", "code": 410,
                                        "message": "too old resource version: 150 (199)"}})],
                            false,
                        )
                    }
                    _ => self.watch(vec![], true),
                }
            }
            ("GET", "/api/v1/namespaces") if !watching => list(
                "Namespace",
                10,
                vec![json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "demo", "resourceVersion": "5", "annotations": {"weft.dev/mesh": "enabled"}}})],
            ),
            (
                "GET",
                "/api/v1/namespaces"
                | "/api/v1/services"
                | "/api/v1/serviceaccounts"
                | "/api/v1/nodes"
                | "/apis/discovery.k8s.io/v1/endpointslices",
            ) => {
                if watching {
                    self.watch(vec![], true)
                } else {
                    list("X", 10, vec![])
                }
            }
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
                let token = body
                    .pointer("/spec/token")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let audiences = body
                    .pointer("/spec/audiences")
                    .cloned()
                    .unwrap_or(Value::Null);
                let status = if token == "agent-a-token" && audiences == json!(["weft-controller"])
                {
                    json!({"authenticated": true, "audiences": ["weft-controller"],
                           "user": {"username": "system:serviceaccount:weft-system:weft-agent",
                                    "extra": {"authentication.kubernetes.io/pod-name": ["agent-x"],
                                              "authentication.kubernetes.io/pod-uid": ["uid-agent-x"],
                                              "authentication.kubernetes.io/node-name": ["node-a"]}}})
                } else {
                    json!({"authenticated": false, "error": "invalid bearer token"})
                };
                full(
                    StatusCode::CREATED,
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": body["spec"], "status": status}),
                )
            }
            ("GET", "/api/v1/namespaces/weft-system/secrets/weft-ca") => {
                match self.secret.lock().unwrap().clone() {
                    Some(s) => full(StatusCode::OK, s),
                    None => not_found(),
                }
            }
            ("POST", "/api/v1/namespaces/weft-system/secrets") => {
                *self.secret.lock().unwrap() = Some(body.clone());
                full(StatusCode::CREATED, body)
            }
            ("PATCH", p) if p.ends_with("/status") => {
                let ct = query.clone();
                self.patches
                    .lock()
                    .unwrap()
                    .push((p.to_string(), ct, body.clone()));
                full(StatusCode::OK, body)
            }
            // Istio and Gateway API kinds: CRDs not installed in this cluster.
            _ => not_found(),
        }
    }
}

async fn start(mock: Arc<Mock>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let m = mock.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let m = m.clone();
                    async move { Ok::<_, Infallible>(m.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn client(addr: SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn pods(store: &Store) -> BTreeMap<String, String> {
    store.read(|m: &Model| {
        m.objects
            .get("Pod")
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.pointer("/metadata/labels/version")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    })
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn list_watch_bookmark_resume_gone_relist() {
    let mock = Arc::new(Mock::default());
    let addr = start(mock.clone()).await;
    let store = Store::new(Model::default());
    let synced = ksrc::spawn(client(addr), store.clone());
    tokio::time::timeout(Duration::from_secs(10), synced)
        .await
        .expect("every kind listed (absent CRDs count as empty)");
    // Namespaces are in the model with their kind set (list items carry none) and no managedFields.
    assert!(store.read(|m| {
        m.namespace_annotations("demo")
            .contains_key("weft.dev/mesh")
    }));

    // Watch events after the list: c added, a modified; then the bookmark ends the first watch.
    eventually("watch events applied", || {
        pods(&store)
            == BTreeMap::from([
                ("demo/a".into(), "v2".into()),
                ("demo/b".into(), "v1".into()),
                ("demo/c".into(), "v1".into()),
            ])
    })
    .await;
    store.read(|m| {
        let a = &m.objects["Pod"]["demo/a"];
        assert_eq!(a["kind"], "Pod");
        assert_eq!(a["apiVersion"], "v1");
        assert!(a["metadata"].get("managedFields").is_none());
    });
    // The watch resumed from the bookmark's resourceVersion, not the list's.
    eventually("second watch", || *mock.pod_watches.lock().unwrap() >= 2).await;
    let watches: Vec<String> = mock
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/pods?") && l.contains("watch=true"))
        .cloned()
        .collect();
    assert!(watches[0].contains("resourceVersion=100"), "{watches:?}");
    assert!(
        watches[0].contains("allowWatchBookmarks=true"),
        "{watches:?}"
    );
    assert!(watches[1].contains("resourceVersion=150"), "{watches:?}");

    // 410 Gone → relist: a and b (deleted meanwhile) disappear, d appears; nothing was lost before
    // the new list was complete.
    mock.gone.notify_one();
    eventually("relist after 410", || {
        pods(&store)
            == BTreeMap::from([
                ("demo/c".into(), "v1".into()),
                ("demo/d".into(), "v2".into()),
            ])
    })
    .await;
    eventually("third watch from the relist", || {
        mock.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("watch=true") && l.contains("resourceVersion=200"))
    })
    .await;
    let lists = mock
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/pods?") && !l.contains("watch=true"))
        .count();
    assert_eq!(lists, 2, "one list, one relist");
}

#[tokio::test]
async fn token_review_ca_secret_and_status() {
    let mock = Arc::new(Mock::default());
    let addr = start(mock.clone()).await;
    let c = client(addr);
    let store = Store::new(Model::default());

    // TokenReview: the agent's projected token → its node; anything else is refused.
    let auth = NodeAuth::TokenReview(TokenReviewAuth::new(
        c.clone(),
        "weft-system/weft-agent",
        store.clone(),
    ));
    assert_eq!(auth.node_of("agent-a-token").await.unwrap(), "node-a");
    assert!(auth.node_of("stolen").await.is_err());
    assert!(
        auth.check_subscriber("node-b", "agent-a-token")
            .await
            .is_err()
    );
    assert!(
        auth.check_subscriber("node-a", "agent-a-token")
            .await
            .is_ok()
    );

    // The CA root is generated once and stored in the Secret; a restart reads the same root.
    let ca1 = ksrc::load_or_create_ca(&c, "weft-system/weft-ca", "cluster.local")
        .await
        .unwrap();
    let ca2 = ksrc::load_or_create_ca(&c, "weft-system/weft-ca", "cluster.local")
        .await
        .unwrap();
    assert_eq!(ca1.root_pem(), ca2.root_pem());
    let secret = mock.secret.lock().unwrap().clone().unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "weft"
    );

    // Status: a broken VirtualService gets Accepted=False by server-side apply; an unchanged
    // model writes nothing again.
    let mut m = Model::default();
    m.insert(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "reviews", "namespace": "demo", "generation": 4},
                    "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": -1}]}]}}));
    let mut w = mesh_controller::status::StatusWriter::new(c.clone());
    w.write(&m).await;
    w.write(&m).await;
    let patches = mock.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let (path, query, body) = &patches[0];
    assert_eq!(
        path,
        "/apis/networking.istio.io/v1/namespaces/demo/virtualservices/reviews/status"
    );
    assert!(query.contains("fieldManager=weft-controller"), "{query}");
    assert_eq!(body["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(body["status"]["conditions"][0]["status"], "False");
    assert_eq!(body["status"]["observedGeneration"], 4);
}
