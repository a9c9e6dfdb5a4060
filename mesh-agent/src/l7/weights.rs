//! Picking one of a route's weighted destinations (Istio relative weights).
use mesh_common::proto::config::WeightedDestination;

/// The sum of the weights (u64: u32 weights cannot overflow it).
pub fn total_weight(dests: &[WeightedDestination]) -> u64 {
    dests.iter().map(|d| u64::from(d.weight)).sum()
}

/// The destination `roll` falls on, with `roll` uniform in `[0, total_weight)` (reduced modulo
/// the total when larger): destination `i` gets `weight_i / total` of the rolls, a weight of 0
/// gets none. `None` when the total is 0 (no destinations, or all weights 0: Istio's webhook
/// rejects that, Gateway API answers 500).
///
/// The controller already gives a lone Istio destination weight 100 ("a single destination gets
/// 100%"); a lone Gateway API backend with weight 0 keeps 0 and gets nothing, as specified.
pub fn pick(dests: &[WeightedDestination], roll: u64) -> Option<&WeightedDestination> {
    let total = total_weight(dests);
    if total == 0 {
        return None;
    }
    let mut roll = roll % total;
    for d in dests {
        let w = u64::from(d.weight);
        if roll < w {
            return Some(d);
        }
        roll -= w;
    }
    None
}

/// [`pick`] with a random roll (`fastrand`).
pub fn pick_random(dests: &[WeightedDestination]) -> Option<&WeightedDestination> {
    match total_weight(dests) {
        0 => None,
        total => pick(dests, fastrand::u64(0..total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(ws: &[(&str, u32)]) -> Vec<WeightedDestination> {
        ws.iter()
            .map(|(s, w)| WeightedDestination {
                host: "reviews.default.svc.cluster.local".into(),
                subset: s.to_string(),
                weight: *w,
                ..Default::default()
            })
            .collect()
    }

    /// Subset name → picks over every roll in `0..n`.
    fn histogram(ds: &[WeightedDestination], n: u64) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = ds.iter().map(|d| (d.subset.clone(), 0)).collect();
        for roll in 0..n {
            let d = pick(ds, roll).expect("a destination");
            if let Some(e) = out.iter_mut().find(|(s, _)| *s == d.subset) {
                e.1 += 1;
            }
        }
        out
    }

    #[test]
    fn ninety_ten_exact() {
        let ds = dests(&[("v1", 90), ("v2", 10)]);
        assert_eq!(
            histogram(&ds, 10_000),
            vec![("v1".into(), 9000), ("v2".into(), 1000)]
        );
    }

    #[test]
    fn relative_weights_need_not_sum_to_100() {
        let ds = dests(&[("v1", 1), ("v2", 1), ("v3", 1)]);
        assert_eq!(total_weight(&ds), 3);
        assert_eq!(
            histogram(&ds, 3_000),
            vec![
                ("v1".into(), 1000),
                ("v2".into(), 1000),
                ("v3".into(), 1000)
            ]
        );
        // Rolls past the total wrap around.
        assert_eq!(pick(&ds, 4).map(|d| d.subset.as_str()), Some("v2"));
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let ds = dests(&[("v1", 0), ("v2", 5), ("v3", 0)]);
        assert_eq!(
            histogram(&ds, 100),
            vec![("v1".into(), 0), ("v2".into(), 100), ("v3".into(), 0)]
        );
    }

    #[test]
    fn single_destination() {
        let ds = dests(&[("v3", 100)]);
        for roll in [0, 1, 99, 12_345] {
            assert_eq!(pick(&ds, roll).map(|d| d.subset.as_str()), Some("v3"));
        }
        assert_eq!(pick_random(&ds).map(|d| d.subset.as_str()), Some("v3"));
    }

    #[test]
    fn no_weight_no_destination() {
        assert!(pick(&dests(&[("v1", 0), ("v2", 0)]), 0).is_none());
        assert!(pick(&dests(&[("v1", 0)]), 0).is_none());
        assert!(pick(&[], 0).is_none());
        assert!(pick_random(&dests(&[("v1", 0), ("v2", 0)])).is_none());
        assert!(pick_random(&[]).is_none());
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let ds = dests(&[("v1", u32::MAX), ("v2", u32::MAX)]);
        assert_eq!(total_weight(&ds), 2 * u64::from(u32::MAX));
        assert_eq!(
            pick(&ds, u64::from(u32::MAX)).map(|d| d.subset.as_str()),
            Some("v2")
        );
        assert!(pick_random(&ds).is_some());
    }

    #[test]
    fn random_roughly_follows_weights() {
        let ds = dests(&[("v1", 80), ("v2", 20)]);
        let v2 = (0..10_000)
            .filter(|_| pick_random(&ds).is_some_and(|d| d.subset == "v2"))
            .count();
        // 2000 expected; 1700..2300 is > 7 standard deviations wide.
        assert!((1700..2300).contains(&v2), "{v2}");
    }
}
