use std::collections::BTreeMap;

use super::*;
use crate::ir::{sorted, testutil::resources};

const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";

#[test]
fn scopes_modes_and_port_level() {
    let ps = peer_authns(
        &sorted(resources(&format!(
            "{PA}metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}
---
{PA}metadata: {{name: root-sel, namespace: istio-system}}\nspec: {{selector: {{matchLabels: {{app: a}}}}, mtls: {{mode: DISABLE}}}}
---
{PA}metadata: {{name: ns, namespace: demo}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}
---
{PA}metadata: {{name: wl, namespace: demo}}\nspec: {{selector: {{matchLabels: {{app: a}}}}, portLevelMtls: {{8080: {{mode: DISABLE}}}}}}
"
        ))),
        "istio-system",
    );
    let got: Vec<(String, i32, i32, BTreeMap<u32, i32>)> = ps
        .iter()
        .map(|p| match &p.resource.kind {
            Some(Kind::PeerAuthn(pa)) => (
                p.name.clone(),
                pa.scope,
                pa.mode,
                pa.port_level_mtls.clone().into_iter().collect(),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    use peer_authn::Mode;
    assert_eq!(
        got,
        [
            (
                "demo/ns".into(),
                PolicyScope::Namespace as i32,
                Mode::Permissive as i32,
                BTreeMap::new()
            ),
            (
                "demo/wl".into(),
                PolicyScope::WorkloadSelector as i32,
                Mode::Unset as i32,
                BTreeMap::from([(8080, Mode::Disable as i32)])
            ),
            (
                "istio-system/default".into(),
                PolicyScope::Mesh as i32,
                Mode::Strict as i32,
                BTreeMap::new()
            ),
        ],
        "root-namespace policies with a selector are ignored"
    );
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let applies: Vec<Vec<bool>> = ps
        .iter()
        .map(|p| {
            [("demo", "a"), ("demo", "b"), ("x", "a")]
                .iter()
                .map(|(ns, app)| p.applies.applies(ns, &labels(app)))
                .collect()
        })
        .collect();
    assert_eq!(
        applies,
        [
            vec![true, true, false],
            vec![true, false, false],
            vec![true, true, true]
        ]
    );
    assert_eq!(ps[0].resource.name, "peerauthn/demo/ns");
}
