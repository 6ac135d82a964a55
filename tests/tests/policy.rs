//! Policies end to end, with iptables locked down (FORWARD DROP, nat flushed): the
//! receiving host enforces its rules on what peers send (in the clear and in the tunnel),
//! answers rejected flows back the way they came, lets replies of allowed flows through,
//! applies same-host rules on the containers' veths (also on a veth that appears while
//! the agent runs), and takes rules added live.

use std::{path::Path, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, output};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

/// Host 0 (10.244.11.0/24): same-host rules only, default allow. Host 1
/// (10.244.12.0/24): rules for what comes from host 0's subnet, default deny.
/// In vxlan mode host 0 carries host 1's rules too (as every host of a cluster would):
/// a packet that arrived in the tunnel cannot be answered on this machine's veth fabric
/// (see README, "Policies"), so rejects are answered where the flow starts.
fn lab(mode: PeerMode) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let lab = Lab::new(Spec {
        hosts: 2,
        containers: 2,
        locked_down: true,
        outside: false,
    })
    .expect("build lab");
    lab.write_configs(|_, _| mode).expect("configs");
    lab.append_config(
        0,
        r#"
[[policy]]
from = "10.244.11.3"
to = "10.244.11.2"
proto = "tcp"
action = "deny"

[[policy]]
from = "10.244.11.0/24"
to = "10.244.11.0/24"
proto = "tcp"
port = 7003
action = "reject"
"#,
    )
    .unwrap();
    lab.set_host_option(1, "default_action", "\"deny\"")
        .unwrap();
    let web_rules = r#"
[[group]]
name = "web"
cidrs = ["10.244.12.2/32"]

[[policy]]
from = "10.244.11.0/24"
to = "web"
proto = "tcp"
port = 7000
action = "allow"

[[policy]]
from = "10.244.11.0/24"
to = "web"
proto = "tcp"
port = "7001-7001"
action = "reject"

[[policy]]
from = "10.244.11.0/24"
to = "web"
proto = "udp"
port = 7001
action = "reject"

[[policy]]
from = "10.244.11.0/24"
to = "web"
proto = "tcp"
port = 7002
action = "deny"
"#;
    lab.append_config(1, web_rules).unwrap();
    if mode == PeerMode::Vxlan {
        lab.append_config(0, web_rules).unwrap();
    }
    Some(lab)
}

/// A counter summed over both hosts.
fn both(lab: &Lab, reason: &str) -> u64 {
    lab.counter(0, reason) + lab.counter(1, reason)
}

/// One attempt from `ns`: (outcome word, milliseconds); see np-probe `try`.
fn attempt(ns: &str, proto: &str, to: &str, port: u16) -> (String, u64) {
    let out = output(in_ns(ns, &format!("{PROBE} try {proto} {to} {port}"))).unwrap();
    let mut words = out.lines().next().unwrap_or("").rsplitn(2, ' ');
    let ms = words
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    (words.next().unwrap_or("").to_owned(), ms)
}

fn expect(ns: &str, proto: &str, to: &str, port: u16, want: &str) -> u64 {
    let (got, ms) = attempt(ns, proto, to, port);
    assert_eq!(got, want, "{proto} {to}:{port} from {ns}");
    ms
}

fn rule_packets(lab: &Lab, i: usize, port: &str, proto: &str) -> u64 {
    lab.netpath_json(i, &["policy", "list", "--json"])["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port"] == port && r["proto"] == proto)
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or_else(|| panic!("no rule for {proto} {port}"))
}

fn policies_hold(mode: PeerMode) {
    let Some(mut lab) = lab(mode) else { return };
    lab.start_all().unwrap();
    let a1 = lab.hosts[0].containers[0].clone();
    let a2 = lab.hosts[0].containers[1].clone();
    let web = lab.hosts[1].containers[0].clone();
    for port in ["7000", "7001", "7002"] {
        lab.spawn_in(&web.ns, Path::new(PROBE), &["serve", port, "120"])
            .unwrap();
    }
    for port in ["7000", "7003"] {
        lab.spawn_in(&a1.ns, Path::new(PROBE), &["serve", port, "120"])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(400));

    // Host 1 decides what host 0's containers send it.
    expect(&a1.ns, "tcp", &web.ip, 7000, "echoed");
    let ms = expect(&a1.ns, "tcp", &web.ip, 7001, "refused");
    assert!(ms < 1000, "a rejected connect fails at once ({ms} ms)");
    let ms = expect(&a1.ns, "udp", &web.ip, 7001, "unreachable");
    assert!(
        ms < 1000,
        "a rejected datagram is answered at once ({ms} ms)"
    );
    let ms = expect(&a1.ns, "tcp", &web.ip, 7002, "timeout");
    assert!(ms >= 2900, "a denied connect times out ({ms} ms)");
    // No rule allows UDP to 7000, nor anything from host 1's side: the default (deny).
    expect(&a1.ns, "udp", &web.ip, 7000, "timeout");
    expect(&web.ns, "tcp", &a1.ip, 7000, "timeout");
    assert!(both(&lab, "drop-policy-reject") >= 2);
    assert!(both(&lab, "drop-policy-deny") >= 1);
    // Host 1 itself refused what only its default denies (in the tunnel too).
    assert!(lab.counter(1, "drop-default-deny") >= 2);
    // The replies of the allowed flow passed host 1's default deny, counted under its rule.
    assert!(rule_packets(&lab, 1, "7000", "tcp") >= 4);

    // Same host: the veth programs decide what the bridge would forward, and deliver it
    // straight into the other container once the host knows both.
    lab.learn(0, &a1).unwrap();
    lab.learn(0, &a2).unwrap();
    expect(&a1.ns, "tcp", &a2.ip, 9, "refused"); // allowed; no server there: its stack's RST
    expect(&a2.ns, "tcp", &a1.ip, 7000, "timeout");
    // a2 -> a1: the /32 deny is more specific than the /24 reject of port 7003.
    expect(&a2.ns, "tcp", &a1.ip, 7003, "timeout");
    assert!(lab.counter(0, "fwd-same-host") >= 2);
    assert!(lab.counter(0, "drop-policy-deny") >= 2);
    // A container that appears while the agent runs gets the program too: a1 serves
    // 7003, so "refused" can only be the policy's answer.
    let a3 = lab.add_container(0).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let ms = expect(&a3.ns, "tcp", &a1.ip, 7003, "refused");
    assert!(ms < 1000);
    assert!(lab.counter(0, "drop-policy-reject") >= 1);
    expect(&a3.ns, "tcp", &a1.ip, 7000, "echoed");

    // A rule added live decides the next new flow; deleted, it stops.
    let out = output(lab.netpath(
        1,
        &[
            "policy",
            "add",
            "--from",
            "10.244.11.0/24",
            "--to",
            "web",
            "--proto",
            "udp",
            "--port",
            "7000",
            "--action",
            "allow",
        ],
    ))
    .unwrap();
    let id: String = out
        .trim()
        .strip_prefix("added rule ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    expect(&a1.ns, "udp", &web.ip, 7000, "echoed");
    assert!(rule_packets(&lab, 1, "7000", "udp") >= 2);
    let bad = lab
        .netpath(
            1,
            &[
                "policy", "add", "--from", "db", "--to", "web", "--action", "deny",
            ],
        )
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such group"));
    output(lab.netpath(1, &["policy", "del", &id])).unwrap();
    expect(&a1.ns, "udp", &web.ip, 7000, "timeout");

    let text = output(lab.netpath(1, &["dump", "policies"])).unwrap();
    assert!(
        text.contains("default deny") && text.contains("web: 10.244.12.2/32"),
        "{text}"
    );
    let flows = lab.netpath_json(1, &["dump", "conntrack", "--json"]);
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "policy"),
        "{flows}"
    );
    let rules = output(in_ns(&lab.hosts[1].ns, "iptables-save")).unwrap();
    assert!(
        !rules.contains("REJECT"),
        "no iptables rule is involved: {rules}"
    );
}

#[test]
fn policies_hold_between_direct_peers_and_on_one_host() {
    policies_hold(PeerMode::Direct);
}

#[test]
fn policies_hold_in_the_vxlan_tunnel() {
    policies_hold(PeerMode::Vxlan);
}
