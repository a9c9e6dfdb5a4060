use super::*;

const NS: &str = "demo";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/demo/sa/productpage";
const SLEEP_OTHER: &str = "spiffe://cluster.local/ns/other/sa/sleep";

fn pol(name: &str, action: Action, rules: Vec<AuthzRule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: NS.into(),
        action: action as i32,
        scope: PolicyScope::Namespace as i32,
        rules,
        ..Default::default()
    }
}

fn dry(mut a: Authorization) -> Authorization {
    a.dry_run = true;
    a
}

fn from(s: AuthzSource) -> AuthzRule {
    AuthzRule {
        from: vec![s],
        ..Default::default()
    }
}

fn to(o: AuthzOperation) -> AuthzRule {
    AuthzRule {
        to: vec![o],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> AuthzRule {
    AuthzRule {
        when: vec![AuthzCondition {
            key: key.into(),
            values: strs(values),
            not_values: strs(not_values),
            l7: !L4_CONDITION_KEYS.contains(&key),
        }],
        ..Default::default()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn principals(v: &[&str]) -> AuthzSource {
    AuthzSource {
        principals: strs(v),
        ..Default::default()
    }
}

fn conn(id: Option<&str>, src: &str, dst: &str) -> Conn {
    Conn::new(
        id,
        src.parse().expect("src ip"),
        dst.parse().expect("dst addr"),
    )
}

/// mTLS from productpage (10.0.0.5) to demo's workload on 10.0.1.7:9080.
fn pp() -> Conn {
    conn(Some(PRODUCTPAGE), "10.0.0.5", "10.0.1.7:9080")
}

fn eval(policies: &[Authorization], c: &Conn) -> Decision {
    let compiled: Vec<Policy> = policies
        .iter()
        .map(|a| Policy::compile(&format!("authz/{}/{}", a.namespace, a.name), a).expect("compile"))
        .collect();
    evaluate(&compiled, c)
}

#[test]
fn decisions() {
    use Action::{Allow, Audit, Custom, Deny};
    let l7_methods = AuthzOperation {
        methods: strs(&["GET"]),
        ..Default::default()
    };
    let mut l7_rule = to(l7_methods.clone());
    l7_rule.l7 = true;
    let cases: Vec<(&str, Vec<Authorization>, Conn, bool, &str)> = vec![
        (
            "no policy → allow",
            vec![],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "ALLOW by principal (Istio form)",
            vec![pol(
                "a",
                Allow,
                vec![from(principals(&["cluster.local/ns/demo/sa/productpage"]))],
            )],
            pp(),
            true,
            "allowed by ALLOW policy demo/a rule 0",
        ),
        (
            "ALLOW by principal (spiffe:// form)",
            vec![pol("a", Allow, vec![from(principals(&[PRODUCTPAGE]))])],
            pp(),
            true,
            "allowed",
        ),
        (
            "ALLOW by principal, other peer → deny",
            vec![pol(
                "a",
                Allow,
                vec![from(principals(&["cluster.local/ns/demo/sa/productpage"]))],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched (demo/a)",
        ),
        (
            "ALLOW by namespace",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    namespaces: strs(&["demo"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "ALLOW by namespace, other namespace → deny",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    namespaces: strs(&["demo"]),
                    ..Default::default()
                })],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "ALLOW by serviceAccount ns/sa",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    service_accounts: strs(&["demo/productpage"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "ALLOW by serviceAccount sa = policy namespace",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    service_accounts: strs(&["sleep"]),
                    ..Default::default()
                })],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "ALLOW by bare serviceAccount (policy namespace)",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    service_accounts: strs(&["productpage"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "when source.serviceAccount",
            vec![pol(
                "d",
                Deny,
                vec![when("source.serviceAccount", &["other/sleep"], &[])],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "denied",
        ),
        (
            "when remote.ip = source IP",
            vec![pol(
                "a",
                Allow,
                vec![when("remote.ip", &["10.0.0.0/8"], &[])],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "http flag does not lift the fail-safe (no request to evaluate)",
            vec![pol("a", Allow, vec![l7_rule.clone()])],
            Conn { http: true, ..pp() },
            false,
            "no ALLOW policy matched",
        ),
        (
            "notServiceAccounts",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    not_service_accounts: strs(&["other/sleep"]),
                    ..Default::default()
                })],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "DENY wins over ALLOW",
            vec![
                pol("allow", Allow, vec![AuthzRule::default()]),
                pol("deny", Deny, vec![from(principals(&["*/sa/productpage"]))]),
            ],
            pp(),
            false,
            "denied by DENY policy demo/deny rule 0",
        ),
        (
            "DENY that does not match, no ALLOW → allow",
            vec![pol("deny", Deny, vec![from(principals(&["*/sa/sleep"]))])],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "spec: {} (ALLOW, no rules) denies all",
            vec![pol("deny-all", Allow, vec![])],
            pp(),
            false,
            "no ALLOW policy matched (demo/deny-all)",
        ),
        (
            "rules: [{}] allows all",
            vec![pol("allow-all", Allow, vec![AuthzRule::default()])],
            conn(None, "192.0.2.1", "10.0.1.7:1234"),
            true,
            "allowed by ALLOW policy demo/allow-all rule 0",
        ),
        (
            "DENY with rules: [{}] denies all",
            vec![pol("deny-all", Deny, vec![AuthzRule::default()])],
            pp(),
            false,
            "denied",
        ),
        (
            "DENY without rules never matches",
            vec![pol("nothing", Deny, vec![])],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "second rule matches",
            vec![pol(
                "a",
                Allow,
                vec![
                    from(principals(&["x"])),
                    from(principals(&["*productpage"])),
                ],
            )],
            pp(),
            true,
            "demo/a rule 1",
        ),
        (
            "port-only rule: to.ports",
            vec![pol(
                "a",
                Allow,
                vec![to(AuthzOperation {
                    ports: vec![9080],
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "port-only rule, other port",
            vec![pol(
                "a",
                Allow,
                vec![to(AuthzOperation {
                    ports: vec![8080],
                    ..Default::default()
                })],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "notPorts",
            vec![pol(
                "d",
                Deny,
                vec![to(AuthzOperation {
                    not_ports: vec![9080],
                    ..Default::default()
                })],
            )],
            conn(Some(PRODUCTPAGE), "10.0.0.5", "10.0.1.7:15000"),
            false,
            "denied by DENY policy demo/d",
        ),
        (
            "notPorts, the excepted port",
            vec![pol(
                "d",
                Deny,
                vec![to(AuthzOperation {
                    not_ports: vec![9080],
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "notNamespaces",
            vec![pol(
                "d",
                Deny,
                vec![from(AuthzSource {
                    not_namespaces: strs(&["demo", "istio-system"]),
                    ..Default::default()
                })],
            )],
            conn(Some(SLEEP_OTHER), "10.0.0.6", "10.0.1.7:9080"),
            false,
            "denied",
        ),
        (
            "notNamespaces, own namespace",
            vec![pol(
                "d",
                Deny,
                vec![from(AuthzSource {
                    not_namespaces: strs(&["demo"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "notNamespaces matches plaintext (no namespace)",
            vec![pol(
                "d",
                Deny,
                vec![from(AuthzSource {
                    not_namespaces: strs(&["demo"]),
                    ..Default::default()
                })],
            )],
            conn(None, "10.0.0.5", "10.0.1.7:9080"),
            false,
            "denied",
        ),
        (
            "ipBlocks v4 CIDR",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["10.0.0.0/24"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "ipBlocks v4 bare IP is /32",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["10.0.0.4"]),
                    ..Default::default()
                })],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "ipBlocks matches an IPv4-mapped source",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["10.0.0.5"]),
                    ..Default::default()
                })],
            )],
            conn(Some(PRODUCTPAGE), "::ffff:10.0.0.5", "10.0.1.7:9080"),
            true,
            "allowed",
        ),
        (
            "ipBlocks v6",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["fd00:10::/64"]),
                    ..Default::default()
                })],
            )],
            conn(Some(PRODUCTPAGE), "fd00:10::5", "[fd00:20::7]:9080"),
            true,
            "allowed",
        ),
        (
            "ipBlocks v6 bare IP is /128; v4 block never matches v6",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["fd00:10::4", "0.0.0.0/0"]),
                    ..Default::default()
                })],
            )],
            conn(Some(PRODUCTPAGE), "fd00:10::5", "[fd00:20::7]:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "notIpBlocks",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    ip_blocks: strs(&["10.0.0.0/8"]),
                    not_ip_blocks: strs(&["10.0.0.0/28"]),
                    ..Default::default()
                })],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "remoteIpBlocks = source IP at L4",
            vec![pol(
                "d",
                Deny,
                vec![from(AuthzSource {
                    remote_ip_blocks: strs(&["10.0.0.5/32"]),
                    ..Default::default()
                })],
            )],
            pp(),
            false,
            "denied",
        ),
        (
            "principal prefix",
            vec![pol(
                "a",
                Allow,
                vec![from(principals(&["cluster.local/ns/demo/*"]))],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "principal suffix",
            vec![pol("a", Allow, vec![from(principals(&["*/sa/sleep"]))])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "principal presence needs a peer",
            vec![pol("a", Allow, vec![from(principals(&["*"]))])],
            conn(None, "10.0.0.5", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "principal presence with a peer",
            vec![pol("a", Allow, vec![from(principals(&["*"]))])],
            pp(),
            true,
            "allowed",
        ),
        (
            "notPrincipals presence denies plaintext (STRICT as a DENY)",
            vec![pol(
                "strict",
                Deny,
                vec![from(AuthzSource {
                    not_principals: strs(&["*"]),
                    ..Default::default()
                })],
            )],
            conn(None, "10.0.0.5", "10.0.1.7:9080"),
            false,
            "denied by DENY policy demo/strict",
        ),
        (
            "notPrincipals presence lets mTLS through",
            vec![pol(
                "strict",
                Deny,
                vec![from(AuthzSource {
                    not_principals: strs(&["*"]),
                    ..Default::default()
                })],
            )],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "plaintext never matches a principal rule",
            vec![pol(
                "a",
                Allow,
                vec![from(principals(&["cluster.local/ns/demo/sa/productpage"]))],
            )],
            conn(None, "10.0.0.5", "10.0.1.7:9080"),
            false,
            "no ALLOW policy matched",
        ),
        (
            "fields AND within a source",
            vec![pol(
                "a",
                Allow,
                vec![from(AuthzSource {
                    principals: strs(&["*/sa/productpage"]),
                    ip_blocks: strs(&["192.168.0.0/16"]),
                    ..Default::default()
                })],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "from AND to",
            vec![pol(
                "a",
                Allow,
                vec![AuthzRule {
                    from: vec![principals(&["*/sa/productpage"])],
                    to: vec![AuthzOperation {
                        ports: vec![8080],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "when source.ip",
            vec![pol(
                "a",
                Allow,
                vec![when("source.ip", &["10.0.0.0/16"], &[])],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "when source.ip notValues",
            vec![pol("a", Allow, vec![when("source.ip", &[], &["10.0.0.5"])])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "when destination.port",
            vec![pol(
                "a",
                Allow,
                vec![when("destination.port", &["9080", "9443"], &[])],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "when destination.port, other port",
            vec![pol(
                "a",
                Allow,
                vec![when("destination.port", &["9443"], &[])],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "when destination.ip",
            vec![pol(
                "d",
                Deny,
                vec![when("destination.ip", &["10.0.1.7"], &[])],
            )],
            pp(),
            false,
            "denied",
        ),
        (
            "when source.namespace + source.principal",
            vec![pol(
                "a",
                Allow,
                vec![AuthzRule {
                    when: vec![
                        AuthzCondition {
                            key: "source.namespace".into(),
                            values: strs(&["demo"]),
                            ..Default::default()
                        },
                        AuthzCondition {
                            key: "source.principal".into(),
                            values: strs(&[PRODUCTPAGE]),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
            )],
            pp(),
            true,
            "allowed",
        ),
        (
            "when connection.sni is never present",
            vec![pol("a", Allow, vec![when("connection.sni", &["*"], &[])])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "L7 fail-safe: ALLOW with methods never matches TCP",
            vec![pol("a", Allow, vec![l7_rule.clone()])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "L7 fail-safe: ALLOW with methods, without the controller's l7 flag",
            vec![pol("a", Allow, vec![to(l7_methods.clone())])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "L7 fail-safe: ALLOW with a request.headers condition",
            vec![pol(
                "a",
                Allow,
                vec![when("request.headers[x-user]", &["admin"], &[])],
            )],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "L7 fail-safe: DENY with only methods denies all TCP",
            vec![pol("d", Deny, vec![l7_rule.clone()])],
            pp(),
            false,
            "denied by DENY policy demo/d rule 0",
        ),
        (
            "L7 fail-safe: DENY keeps its L4 parts (other port → no match)",
            vec![pol(
                "d",
                Deny,
                vec![AuthzRule {
                    to: vec![AuthzOperation {
                        ports: vec![8080],
                        methods: strs(&["POST"]),
                        ..Default::default()
                    }],
                    l7: true,
                    ..Default::default()
                }],
            )],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "L7 fail-safe: DENY keeps its L4 parts (same port → deny)",
            vec![pol(
                "d",
                Deny,
                vec![AuthzRule {
                    from: vec![AuthzSource {
                        namespaces: strs(&["demo"]),
                        request_principals: strs(&["*"]),
                        ..Default::default()
                    }],
                    to: vec![AuthzOperation {
                        ports: vec![9080],
                        methods: strs(&["POST"]),
                        ..Default::default()
                    }],
                    l7: true,
                    ..Default::default()
                }],
            )],
            pp(),
            false,
            "denied",
        ),
        (
            "L7 fail-safe: DENY with a request.* condition and an L4 source",
            vec![pol(
                "d",
                Deny,
                vec![AuthzRule {
                    from: vec![principals(&["*/sa/sleep"])],
                    when: vec![AuthzCondition {
                        key: "request.auth.claims[group]".into(),
                        values: strs(&["admin"]),
                        l7: true,
                        ..Default::default()
                    }],
                    l7: true,
                    ..Default::default()
                }],
            )],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "L7 ALLOW rule ignored, L4 rule of the same policy still allows",
            vec![pol(
                "a",
                Allow,
                vec![l7_rule.clone(), from(principals(&["*/sa/productpage"]))],
            )],
            pp(),
            true,
            "demo/a rule 1",
        ),
        (
            "empty to entry (ports the controller dropped) never matches in ALLOW",
            vec![pol("a", Allow, vec![to(AuthzOperation::default())])],
            pp(),
            false,
            "no ALLOW policy matched",
        ),
        (
            "empty from entry matches anything in DENY",
            vec![pol("d", Deny, vec![from(AuthzSource::default())])],
            pp(),
            false,
            "denied",
        ),
        (
            "CUSTOM fails closed",
            vec![{
                let mut c = pol("ext", Custom, vec![AuthzRule::default()]);
                c.provider = "opa".into();
                c
            }],
            pp(),
            false,
            "CUSTOM authorization is not supported (policy demo/ext rule 0, provider \"opa\")",
        ),
        (
            "CUSTOM with L7 rules fails closed on TCP",
            vec![pol("ext", Custom, vec![l7_rule.clone()])],
            pp(),
            false,
            "CUSTOM authorization is not supported",
        ),
        (
            "CUSTOM before DENY",
            vec![
                pol("deny", Deny, vec![AuthzRule::default()]),
                pol("ext", Custom, vec![AuthzRule::default()]),
            ],
            pp(),
            false,
            "CUSTOM",
        ),
        (
            "AUDIT does not change the decision",
            vec![pol("audit", Audit, vec![AuthzRule::default()])],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "dry-run DENY is not enforced",
            vec![dry(pol("d", Deny, vec![AuthzRule::default()]))],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
        (
            "dry-run ALLOW does not count as an ALLOW policy",
            vec![dry(pol("deny-all", Allow, vec![]))],
            pp(),
            true,
            "no ALLOW policy applies",
        ),
    ];
    for (name, policies, c, allowed, reason) in cases {
        let d = eval(&policies, &c);
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert!(d.reason.contains(reason), "{name}: reason {:?}", d.reason);
    }
}

#[test]
fn audit_reports() {
    let d = eval(
        &[
            pol("audit", Action::Audit, vec![from(principals(&["*"]))]),
            pol("audit-other", Action::Audit, vec![from(principals(&["x"]))]),
            pol("deny", Action::Deny, vec![AuthzRule::default()]),
        ],
        &pp(),
    );
    assert!(!d.allowed);
    assert_eq!(d.audited, ["audited by demo/audit rule 0"]);
    assert!(d.dry_run_reports.is_empty());
}

#[test]
fn dry_run_reports() {
    let d = eval(
        &[
            dry(pol(
                "d",
                Action::Deny,
                vec![from(principals(&["*productpage"]))],
            )),
            dry(pol("d2", Action::Deny, vec![from(principals(&["*sleep"]))])),
            pol("a", Action::Allow, vec![AuthzRule::default()]),
        ],
        &pp(),
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, "allowed by ALLOW policy demo/a rule 0");
    assert_eq!(
        d.dry_run_reports,
        [
            "dry-run DENY demo/d matched rule 0",
            "dry-run DENY demo/d2 did not match",
            "with dry-run policies enforced: denied (denied by DENY policy demo/d rule 0)",
        ]
    );
}

#[test]
fn peers() {
    let cases = [
        (
            "spiffe://cluster.local/ns/demo/sa/pp",
            Some(("cluster.local/ns/demo/sa/pp", Some("demo"), Some("pp"))),
        ),
        (
            "cluster.local/ns/demo/sa/pp",
            Some(("cluster.local/ns/demo/sa/pp", Some("demo"), Some("pp"))),
        ),
        (
            "spiffe://example.org/web",
            Some(("example.org/web", None, None)),
        ),
        ("", None),
        ("spiffe://", None),
    ];
    for (id, want) in cases {
        let got = Peer::from_spiffe(id);
        let got = got.as_ref().map(|p| {
            (
                p.principal.as_str(),
                p.namespace.as_deref(),
                p.service_account.as_deref(),
            )
        });
        assert_eq!(got, want, "{id}");
    }
    let c = Conn::from_inbound(&InboundConn {
        src_identity: String::new(),
        src_ip: "10.0.0.1".parse().expect("ip"),
        dst: "10.0.0.2:80".parse().expect("addr"),
    });
    assert_eq!(c.peer, None);
    assert!(!c.http);
}

#[test]
fn cidrs() {
    let cases = [
        ("10.0.0.0/8", "10.255.1.2", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("10.1.2.3/8", "10.9.9.9", true),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "::1", false),
        ("192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
        ("::/0", "fd00::1", true),
        ("fd00::/8", "fd12::1", true),
        ("fd00::/8", "fe80::1", false),
        ("fd00::1", "fd00::1", true),
        ("fd00::1", "fd00::2", false),
        ("10.0.0.1", "::ffff:10.0.0.1", true),
    ];
    for (cidr, ip, want) in cases {
        let c = Cidr::parse(cidr).expect(cidr);
        assert_eq!(c.contains(ip.parse().expect(ip)), want, "{cidr} ∋ {ip}");
    }
    for bad in [
        "",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0/8",
        "a.b.c.d",
        "10.0.0.0/x",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn malformed_policies_are_refused() {
    let bad_ip = pol(
        "bad",
        Action::Allow,
        vec![
            AuthzRule::default(),
            from(AuthzSource {
                ip_blocks: strs(&["10.0.0.0/8", "10.0.0.300"]),
                ..Default::default()
            }),
        ],
    );
    let e = Policy::compile("authz/demo/bad", &bad_ip).expect_err("bad CIDR");
    assert_eq!(e.resource, "authz/demo/bad");
    assert_eq!(e.field, "rules[1].from[0].ip_blocks[1]");
    let bad_when = pol(
        "w",
        Action::Deny,
        vec![when("destination.port", &["http"], &[])],
    );
    let e = Policy::compile("authz/demo/w", &bad_when).expect_err("bad port");
    assert_eq!(e.field, "rules[0].when[0].values[0]");
    let bad_not_ip = pol("w", Action::Deny, vec![when("source.ip", &[], &["nope"])]);
    let e = Policy::compile("authz/demo/w", &bad_not_ip).expect_err("bad ip");
    assert_eq!(e.field, "rules[0].when[0].not_values[0]");
    let bad_port = pol(
        "p",
        Action::Allow,
        vec![to(AuthzOperation {
            not_ports: vec![70000],
            ..Default::default()
        })],
    );
    let e = Policy::compile("authz/demo/p", &bad_port).expect_err("bad port");
    assert_eq!(e.field, "rules[0].to[0].not_ports[0]");
    let mut bad_action = pol("x", Action::Allow, vec![]);
    bad_action.action = 42;
    let e = Policy::compile("authz/demo/x", &bad_action).expect_err("bad action");
    assert_eq!(e.field, "action");
    // L7 conditions are not parsed at L4.
    let l7 = pol(
        "l7",
        Action::Deny,
        vec![when("request.headers[x]", &["/["], &[])],
    );
    assert!(Policy::compile("authz/demo/l7", &l7).is_ok());
}
