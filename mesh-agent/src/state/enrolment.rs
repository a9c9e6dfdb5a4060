//! Which pods to enrol and what changes: desired plans from workloads, and the diff against what is
//! enrolled now.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::workload::{Workload, parse_cidr};

/// What enrolment of one pod needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub fast_path: bool,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<(Ipv4Addr, u8)>,
    /// SPIFFE ID the pod's tunnels present.
    pub identity: String,
    /// Istio canonical workload name (telemetry).
    pub workload: String,
}

/// A workload that cannot be planned (bad field): reported, the rest goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    pub pod: String,
    pub message: String,
}

/// The pods of `node` to enrol, by UID. `node_fast_path` turns the fast path on for every pod.
pub fn desired(
    workloads: &[Workload],
    node: &str,
    node_fast_path: bool,
) -> (BTreeMap<String, PodPlan>, Vec<PlanError>) {
    let mut out = BTreeMap::new();
    let mut errors = vec![];
    for w in workloads.iter().filter(|w| w.node == node && w.mesh) {
        let mut cidrs = vec![];
        let mut bad = None;
        for c in &w.exclude_outbound_cidrs {
            match parse_cidr(c) {
                Ok(v) => cidrs.push(v),
                Err(e) => bad = Some(format!("excludeOutboundCidrs: {e}")),
            }
        }
        if let Some(message) = bad {
            errors.push(PlanError {
                pod: format!("{}/{}", w.namespace, w.name),
                message,
            });
            continue;
        }
        let dedup = |v: &Vec<u16>| -> Vec<u16> {
            v.iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        out.insert(
            w.uid.clone(),
            PodPlan {
                uid: w.uid.clone(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                ip: w.ip,
                fast_path: w.fast_path || node_fast_path,
                exclude_outbound_ports: dedup(&w.exclude_outbound_ports),
                exclude_inbound_ports: dedup(&w.exclude_inbound_ports),
                exclude_outbound_cidrs: cidrs,
                identity: w.spiffe_id(),
                workload: crate::state::workload::canonical_name(&w.labels, &w.name),
            },
        );
    }
    (out, errors)
}

/// What to do to go from `current` to `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub enroll: Vec<String>,
    pub unenroll: Vec<String>,
    /// Enrolled with a different plan (IP, exclusions, fast path): re-enrolled.
    pub update: Vec<String>,
}

pub fn diff(current: &BTreeMap<String, PodPlan>, desired: &BTreeMap<String, PodPlan>) -> Diff {
    let mut d = Diff::default();
    for (uid, plan) in desired {
        match current.get(uid) {
            None => d.enroll.push(uid.clone()),
            Some(p) if p != plan => d.update.push(uid.clone()),
            Some(_) => {}
        }
    }
    d.unenroll = current
        .keys()
        .filter(|u| !desired.contains_key(*u))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(uid: &str, node: &str, mesh: bool) -> Workload {
        Workload {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "demo".into(),
            node: node.into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            service_account: "default".into(),
            labels: Default::default(),
            mesh,
            fast_path: false,
            exclude_outbound_ports: vec![5432, 5432],
            exclude_inbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
            identity: String::new(),
        }
    }

    #[test]
    fn desired_table() {
        let mut bad = w("bad", "node-a", true);
        bad.exclude_outbound_cidrs = vec!["nope".into()];
        // (name, workloads, node fast path, expected UIDs, expected errors)
        type Case = (&'static str, Vec<Workload>, bool, Vec<&'static str>, usize);
        let cases: Vec<Case> = vec![
            (
                "only this node's meshed pods",
                vec![
                    w("1", "node-a", true),
                    w("2", "node-b", true),
                    w("3", "node-a", false),
                ],
                false,
                vec!["1"],
                0,
            ),
            (
                "bad workload reported, others planned",
                vec![bad, w("1", "node-a", true)],
                false,
                vec!["1"],
                1,
            ),
            ("empty", vec![], true, vec![], 0),
        ];
        for (name, ws, fast, want, nerr) in cases {
            let (plans, errs) = desired(&ws, "node-a", fast);
            assert_eq!(
                plans.keys().map(String::as_str).collect::<Vec<_>>(),
                want,
                "{name}"
            );
            assert_eq!(errs.len(), nerr, "{name}");
            for p in plans.values() {
                assert_eq!(p.exclude_outbound_ports, vec![5432], "{name}: deduplicated");
                assert_eq!(p.fast_path, fast, "{name}");
            }
        }
    }

    #[test]
    fn diff_table() {
        let (a, _) = desired(&[w("1", "n", true), w("2", "n", true)], "n", false);
        let (mut b, _) = desired(&[w("2", "n", true), w("3", "n", true)], "n", false);
        assert_eq!(
            diff(&a, &b),
            Diff {
                enroll: vec!["3".into()],
                unenroll: vec!["1".into()],
                update: vec![]
            }
        );
        b.get_mut("2").unwrap().fast_path = true;
        assert_eq!(diff(&a, &b).update, vec!["2".to_string()]);
        assert_eq!(diff(&a, &a), Diff::default());
    }
}
