//! `analyze_dir` over the fixtures: the valid Bookinfo-style directory is clean; each file in
//! `invalid/` (namespace = file name) yields exactly one Error or Warning naming object and field.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_controller::validate::{Diagnostic, Severity, analyze_dir};

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/analyze")
        .join(sub)
}

fn namespace_of(d: &Diagnostic) -> &str {
    d.object
        .split_once(' ')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(ns, _)| ns)
        .unwrap_or("")
}

#[test]
fn valid_dir_is_clean() {
    let (diags, objects) = analyze_dir(&fixtures("valid")).expect("analyze");
    // 2 Services, 4 Deployments, 2 DestinationRules, 2 VirtualServices.
    assert_eq!(objects, 10);
    let bad: Vec<String> = diags
        .iter()
        .filter(|d| d.severity != Severity::Info)
        .map(ToString::to_string)
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected diagnostics:\n{}",
        bad.join("\n")
    );
}

#[test]
fn each_invalid_file_yields_exactly_one_finding() {
    // file stem (= namespace) -> (severity, code, object, field, message fragment)
    let expected: BTreeMap<&str, (Severity, &str, &str, &str, &str)> = [
        (
            "abort-700",
            (
                Severity::Error,
                "IST0106",
                "VirtualService abort-700/reviews",
                "spec.http[0].fault.abort.httpStatus",
                "700",
            ),
        ),
        (
            "ap-custom-without-provider",
            (
                Severity::Error,
                "IST0106",
                "AuthorizationPolicy ap-custom-without-provider/ext-authz",
                "spec.provider",
                "CUSTOM action requires provider",
            ),
        ),
        (
            "ap-selector-and-target-refs",
            (
                Severity::Error,
                "IST0106",
                "AuthorizationPolicy ap-selector-and-target-refs/allow-get",
                "spec.selector",
                "only one of targetRefs or selector can be set",
            ),
        ),
        (
            "bad-duration",
            (
                Severity::Error,
                "IST0106",
                "VirtualService bad-duration/reviews",
                "spec.http[0].timeout",
                "invalid duration \"5 seconds\"",
            ),
        ),
        (
            "bad-regex",
            (
                Severity::Error,
                "IST0106",
                "VirtualService bad-regex/reviews",
                "spec.http[0].match[0].uri.regex",
                "invalid regex",
            ),
        ),
        (
            "conflicting-virtual-services",
            (
                Severity::Warning,
                "IST0109",
                "VirtualService conflicting-virtual-services/reviews",
                "spec.hosts",
                "conflicting-virtual-services/reviews-canary",
            ),
        ),
        (
            "duration-below-1ms",
            (
                Severity::Error,
                "IST0106",
                "VirtualService duration-below-1ms/reviews",
                "spec.http[0].retries.perTryTimeout",
                "must be at least 1ms",
            ),
        ),
        (
            "fault-empty",
            (
                Severity::Error,
                "IST0106",
                "VirtualService fault-empty/reviews",
                "spec.http[0].fault",
                "at least one of delay or abort",
            ),
        ),
        (
            "httproute-bad-regex",
            (
                Severity::Error,
                "IST0106",
                "HTTPRoute httproute-bad-regex/reviews",
                "spec.rules[0].matches[0].path.value",
                "invalid regex",
            ),
        ),
        (
            "negative-attempts",
            (
                Severity::Error,
                "IST0106",
                "VirtualService negative-attempts/reviews",
                "spec.http[0].retries.attempts",
                "attempts cannot be negative",
            ),
        ),
        (
            "pa-port-level-without-selector",
            (
                Severity::Error,
                "IST0106",
                "PeerAuthentication pa-port-level-without-selector/default",
                "spec.portLevelMtls",
                "portLevelMtls requires selector",
            ),
        ),
        (
            "parse-unknown-field",
            (
                Severity::Error,
                "IST0106",
                "VirtualService parse-unknown-field/reviews",
                "spec.http[0].routes",
                "unknown field \"routes\"",
            ),
        ),
        (
            "parse-wrong-type",
            (
                Severity::Error,
                "IST0106",
                "VirtualService parse-wrong-type/reviews",
                "spec.http[0].route[0].weight",
                "invalid type: string \"fifty\"",
            ),
        ),
        (
            "route-and-direct-response",
            (
                Severity::Error,
                "IST0106",
                "VirtualService route-and-direct-response/reviews",
                "spec.http[0]",
                "both route and direct_response",
            ),
        ),
        (
            "route-and-redirect",
            (
                Severity::Error,
                "IST0106",
                "VirtualService route-and-redirect/reviews",
                "spec.http[0]",
                "HTTP route cannot contain both route and redirect",
            ),
        ),
        (
            "subset-no-pods",
            (
                Severity::Warning,
                "IST0173",
                "DestinationRule subset-no-pods/reviews",
                "spec.subsets[2].labels",
                "subset \"v3\" selects no pods",
            ),
        ),
        (
            "unknown-host",
            (
                Severity::Error,
                "IST0101",
                "VirtualService unknown-host/reviews",
                "spec.http[0].route[0].destination.host",
                "Referenced host not found: \"reviewz\"",
            ),
        ),
        (
            "unknown-subset",
            (
                Severity::Error,
                "IST0101",
                "VirtualService unknown-subset/reviews",
                "spec.http[0].route[0].destination.subset",
                "\"reviews+v3\"",
            ),
        ),
        (
            "unreachable-rule",
            (
                Severity::Warning,
                "IST0131",
                "VirtualService unreachable-rule/reviews",
                "spec.http[1]",
                "not used",
            ),
        ),
        (
            "weight-negative",
            (
                Severity::Error,
                "IST0106",
                "VirtualService weight-negative/reviews",
                "spec.http[0].route[0].weight",
                "weight -10 < 0",
            ),
        ),
        (
            "weight-total-zero",
            (
                Severity::Error,
                "IST0106",
                "VirtualService weight-total-zero/reviews",
                "spec.http[0].route",
                "total destination weight = 0",
            ),
        ),
    ]
    .into_iter()
    .collect();

    let dir = fixtures("invalid");
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    stems.sort();
    assert_eq!(
        stems,
        expected.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
        "every invalid fixture needs an expectation (and vice versa)"
    );

    let (diags, objects) = analyze_dir(&dir).expect("analyze");
    assert!(objects >= stems.len());
    let mut by_ns: BTreeMap<&str, Vec<&Diagnostic>> = BTreeMap::new();
    for d in diags.iter().filter(|d| d.severity != Severity::Info) {
        by_ns.entry(namespace_of(d)).or_default().push(d);
    }
    for (stem, (severity, code, object, field, fragment)) in &expected {
        let found = by_ns.remove(stem).unwrap_or_default();
        let shown: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            found.len(),
            1,
            "{stem}.yaml: want exactly one finding, got {shown:#?}"
        );
        let d = found[0];
        assert_eq!(
            (d.severity, d.code, d.object.as_str(), d.field.as_str()),
            (*severity, *code, *object, *field),
            "{stem}.yaml: {}",
            shown[0]
        );
        assert!(d.message.contains(fragment), "{stem}.yaml: {}", shown[0]);
        let line = d.to_string();
        assert!(line.contains(&format!("({object}) {field}: ")), "{line}");
    }
    assert!(by_ns.is_empty(), "unattributed findings: {by_ns:#?}");
}

#[test]
fn parse_errors_name_file_and_document() {
    let (diags, _) = analyze_dir(&fixtures("invalid")).expect("analyze");
    let d = diags
        .iter()
        .find(|d| d.object == "VirtualService parse-wrong-type/reviews")
        .expect("parse error");
    // Service, 2 Deployments, DestinationRule, then the VirtualService.
    assert!(
        d.message.ends_with("(parse-wrong-type.yaml, document 5)"),
        "{d}"
    );
}

#[test]
fn missing_dir_is_an_error() {
    assert!(analyze_dir(&fixtures("does-not-exist")).is_err());
}
