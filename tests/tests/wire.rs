//! The wire check: every path on which netpath rewrites or makes a header, with checksum
//! offload off on every veth of the lab. Elsewhere the lab's veths carry TCP and UDP as
//! CHECKSUM_PARTIAL (the checksum is the sender's to finish, nobody verifies it), so a
//! wrong patch of an L4 checksum would pass unseen; here each sender fills its checksums
//! and each receiving stack verifies them: a wrong one is a lost packet (the exchange
//! fails) and a count in that namespace's InCsumErrors.

use std::{path::Path, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, ping};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

/// Bytes echoed over each TCP connection: many full segments each way (TSO is off with
/// the offload, so each is a packet of its own).
const TCP_BYTES: &str = "200000";

#[test]
fn checksums_hold_on_the_wire_with_offloads_off() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let mut lab = Lab::new(Spec {
        hosts: 3,
        containers: 2,
        locked_down: true,
        outside: true,
    })
    .expect("build lab");
    // h1-h2 direct, h3 in VXLAN with both.
    lab.write_configs(|h, p| {
        if h.idx + p.idx == 3 {
            PeerMode::Direct
        } else {
            PeerMode::Vxlan
        }
    })
    .unwrap();
    let h1 = lab.hosts[0].underlay.clone();
    let c1_ip = lab.hosts[0].containers[0].ip.clone();
    lab.set_host_option(0, "masquerade", "true").unwrap();
    lab.append_config(
        0,
        &format!(
            r#"
[[publish]]
proto = "tcp"
host_port = 8080
container = "{c1_ip}"
port = 7000

[[publish]]
proto = "udp"
host_port = 8081
container = "{c1_ip}"
port = 7000

[[policy]]
from = "10.244.12.0/24"
to = "10.244.11.0/24"
proto = "tcp"
port = 7003
action = "reject"

[[policy]]
from = "10.244.12.0/24"
to = "10.244.11.0/24"
proto = "udp"
port = 7003
action = "reject"
"#
        ),
    )
    .unwrap();
    lab.checksum_offload_off().unwrap();
    lab.start_all().unwrap();
    let out_ns = lab.outside().ns.clone();
    let out = lab.outside().addr.clone();
    let [c1, c2] = [0, 1].map(|k| lab.hosts[0].containers[k].clone());
    let c21 = lab.hosts[1].containers[0].clone();
    let c31 = lab.hosts[2].containers[0].clone();
    for ns in [&out_ns, &c1.ns, &c2.ns, &c21.ns, &c31.ns] {
        lab.spawn_in(ns, Path::new(PROBE), &["serve", "7000", "120"])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    // Every container is an endpoint before the first exchange: deliveries go straight
    // into it (fwd-via-bridge would carry them otherwise, with the bridge's checksums).
    for (i, c) in [(0, &c1), (0, &c2), (1, &c21), (2, &c31)] {
        lab.learn(i, c).unwrap();
    }
    // Each exchange: (what it checks, client namespace, np-probe's arguments, a word its
    // output must hold).
    let (c1_ip, c2_ip, c21_ip, c31_ip) = (&c1.ip, &c2.ip, &c21.ip, &c31.ip);
    let exchanges = [
        (
            "masquerade TCP",
            &c1.ns,
            format!("check tcp {out} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "masquerade UDP",
            &c1.ns,
            format!("check udp {out} 7000 1000"),
            "ok",
        ),
        (
            "masqueraded RST",
            &c1.ns,
            format!("refused tcp {out} 7999"),
            "ok",
        ),
        (
            "masqueraded ICMP error",
            &c1.ns,
            format!("refused udp {out} 7999"),
            "ok",
        ),
        (
            "published TCP",
            &out_ns,
            format!("check tcp {h1} 8080 {TCP_BYTES}"),
            "ok",
        ),
        (
            "published UDP",
            &out_ns,
            format!("check udp {h1} 8081 1000"),
            "ok",
        ),
        (
            "direct TCP",
            &c1.ns,
            format!("check tcp {c21_ip} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "direct TCP, other way",
            &c21.ns,
            format!("check tcp {c1_ip} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "direct UDP",
            &c21.ns,
            format!("check udp {c1_ip} 7000 1000"),
            "ok",
        ),
        (
            "vxlan TCP (MSS clamped)",
            &c1.ns,
            format!("check tcp {c31_ip} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "vxlan TCP, other way",
            &c31.ns,
            format!("check tcp {c1_ip} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "vxlan UDP",
            &c1.ns,
            format!("check udp {c31_ip} 7000 1000"),
            "ok",
        ),
        (
            "same host TCP",
            &c1.ns,
            format!("check tcp {c2_ip} 7000 {TCP_BYTES}"),
            "ok",
        ),
        (
            "policy's RST",
            &c21.ns,
            format!("try tcp {c1_ip} 7003"),
            "refused",
        ),
        (
            "policy's ICMP error",
            &c21.ns,
            format!("try udp {c1_ip} 7003"),
            "unreachable",
        ),
    ];
    let mut failed = Vec::new();
    for (what, ns, args, want) in &exchanges {
        match netpath_tests::output(in_ns(ns, &format!("{PROBE} {args}"))) {
            Ok(text) if text.contains(want) => {}
            r => failed.push(format!("{what} ({args}, want {want:?}): {r:?}")),
        }
    }
    // Netpath's own ICMP: fragmentation needed, to a DF packet too big for the tunnel.
    let big = in_ns(
        &c1.ns,
        &format!("ping -n -c 1 -W 1 -M do -s 1472 {}", c31.ip),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&big.stdout);
    if !text.contains("Frag needed and DF set (mtu = 1450)") {
        failed.push(format!("frag-needed not received: {text}"));
    }
    let (sent, got, _) = ping(&c1.ns, &out, 3, "0.2").unwrap();
    if got != sent {
        failed.push(format!("masqueraded ping: {got} of {sent}"));
    }
    let bad = lab.checksum_errors().unwrap();
    assert!(
        failed.is_empty() && bad.is_empty(),
        "with checksum offload off:\n{}\nbad checksums counted: {bad:?}\n{}",
        failed.join("\n"),
        lab.diagnose(&[0, 1, 2])
    );
    // Each exchange took the path it is named for.
    for (host, reason) in [
        (0, "fwd-masquerade"),
        (0, "fwd-masquerade-reply"),
        (0, "fwd-nat-icmp-error"),
        (0, "fwd-published"),
        (0, "fwd-published-reply"),
        (0, "fwd-direct"),
        (0, "fwd-deliver"),
        (0, "fwd-vxlan-encap"),
        (0, "fwd-vxlan-decap"),
        (0, "fwd-same-host"),
        (0, "drop-policy-reject"),
        (0, "drop-frag-needed"),
    ] {
        assert!(lab.counter(host, reason) > 0, "h{}: no {reason}", host + 1);
    }
    lab.teardown().unwrap();
}
