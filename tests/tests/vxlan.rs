//! The VXLAN overlay end to end: netpath's own tunnel between netpath hosts, a fleet that
//! mixes direct and vxlan peers, and interop with a host that uses only Linux's vxlan
//! device. Containers keep the default MTU 1500 everywhere.

use std::{path::Path, thread, time::Duration};

use netpath_tests::{Host, Lab, PeerMode, in_ns, output, ping};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

fn lab(hosts: usize) -> Option<Lab> {
    Lab::hosts(hosts, 1)
}

/// ICMP, UDP and TCP from host a's container to host b's, and TCP throughput: a tunnel
/// whose MTU handling is broken carries pings but stalls bulk TCP (well under 1 Mbit/s).
fn assert_crosses(lab: &mut Lab, a: usize, b: usize, bulk: bool) {
    let from = lab.hosts[a].containers[0].ns.clone();
    let to_ns = lab.hosts[b].containers[0].ns.clone();
    let to = lab.hosts[b].containers[0].ip.clone();
    let (sent, got, _) = ping(&from, &to, 3, "0.2").unwrap();
    assert_eq!(got, sent, "ping h{} -> h{}", a + 1, b + 1);
    lab.spawn_in(&to_ns, Path::new(PROBE), &["serve", "7777", "30"])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    for proto in ["udp", "tcp"] {
        let r = output(in_ns(&from, &format!("{PROBE} check {proto} {to} 7777")));
        assert!(r.is_ok(), "{proto} h{} -> h{}: {r:?}", a + 1, b + 1);
    }
    if bulk {
        lab.spawn_in(&to_ns, Path::new("iperf3"), &["-s", "-1"])
            .unwrap();
        thread::sleep(Duration::from_millis(300));
        let out = output(in_ns(&from, &format!("iperf3 -J -t 2 -c {to}"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap();
        assert!(
            bps > 100e6,
            "bulk TCP h{} -> h{}: {bps} bit/s",
            a + 1,
            b + 1
        );
    }
}

fn counters(lab: &Lab, i: usize) -> serde_json::Value {
    let out = output(lab.netpath(i, &["dump", "counters", "--json"])).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.into_iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["packets"].clone(),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn vxlan_three_hosts_icmp_udp_tcp() {
    let Some(mut lab) = lab(3) else { return };
    lab.write_configs(|_, _| PeerMode::Vxlan).unwrap();
    lab.start_all().unwrap();
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        assert_crosses(&mut lab, a, b, a == 0 && b == 1);
    }
    for i in 0..3 {
        let c = counters(&lab, i);
        assert!(c["fwd-vxlan-encap"].as_u64().unwrap() > 0, "{c}");
        assert!(c["fwd-vxlan-decap"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["fwd-direct"], 0, "{c}");
        // Decapsulated packets go straight into the containers: only the first one to a
        // container the host has not learned yet passes the bridge (whose ARP for it
        // teaches the host).
        assert!(c["fwd-via-bridge"].as_u64().unwrap() <= 2, "{c}");
    }
}

/// h1-h2 direct; h3 reached through the tunnel by both.
fn h3_through_the_tunnel(a: &Host, b: &Host) -> PeerMode {
    if a.idx == 3 || b.idx == 3 {
        PeerMode::Vxlan
    } else {
        PeerMode::Direct
    }
}

#[test]
fn mixed_direct_and_vxlan_fleet() {
    let Some(mut lab) = lab(3) else { return };
    lab.write_configs(h3_through_the_tunnel).unwrap();
    lab.start_all().unwrap();
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)] {
        assert_crosses(&mut lab, a, b, false);
    }
    let c = counters(&lab, 0);
    assert!(
        c["fwd-direct"].as_u64().unwrap() > 0 && c["fwd-vxlan-encap"].as_u64().unwrap() > 0,
        "{c}"
    );
}

#[test]
fn interop_with_linux_vxlan_host() {
    let Some(mut lab) = lab(3) else { return };
    // h3 runs no netpath: only Linux's vxlan device, as flannel or Docker overlay would.
    lab.write_configs(h3_through_the_tunnel).unwrap();
    lab.kernel_vxlan(2).unwrap();
    lab.start(0).unwrap();
    lab.start(1).unwrap();
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert_crosses(&mut lab, a, b, a == 0 || b == 0);
    }
    let peers = output(lab.netpath(0, &["dump", "peers", "--json"])).unwrap();
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let h3 = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "h3")
        .unwrap();
    assert!(
        h3["tx_packets"].as_u64().unwrap() > 0 && h3["rx_packets"].as_u64().unwrap() > 0,
        "{h3}"
    );
}

/// Path MTU discovery across the tunnel: containers have MTU 1500, the tunnel carries
/// 1450. An oversized packet is answered with fragmentation-needed (mtu 1450) by the
/// gateway, the sender learns the path MTU, and then big pings and UDP datagrams cross
/// (fragmented by the sender). Without the ICMP error, every one of them would vanish.
#[test]
fn oversized_df_packets_get_frag_needed() {
    let Some(mut lab) = lab(2) else { return };
    lab.write_configs(|_, _| PeerMode::Vxlan).unwrap();
    lab.start_all().unwrap();
    let from = lab.hosts[0].containers[0].ns.clone();
    let to_ns = lab.hosts[1].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    let gw = lab.hosts[0].gateway.clone();

    // stdout whatever the exit status (ping exits 1 when a reply is missing).
    let stdout = |cmd: &str| {
        let out = in_ns(&from, cmd).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = stdout(&format!("ping -n -c 1 -W 1 -M do -s 1472 {to}"));
    assert!(
        text.contains(&format!(
            "From {gw} icmp_seq=1 Frag needed and DF set (mtu = 1450)"
        )),
        "{text}"
    );
    assert_eq!(counters(&lab, 0)["drop-frag-needed"], 1);

    // The route now carries the path MTU: pings of 1500 bytes are sent in fragments.
    assert!(stdout(&format!("ip route get {to}")).contains("mtu 1450"));
    // The first reply (1500 bytes, no DF) is answered on h2 in turn and lost; h2 then
    // fragments its replies too.
    let big_pings = |count: u32| {
        stdout(&format!(
            "ping -n -q -c {count} -i 0.2 -W 1 -M want -s 1472 {to}"
        ))
    };
    let text = big_pings(3);
    assert!(text.contains("3 packets transmitted, 2 received"), "{text}");
    assert_eq!(counters(&lab, 1)["drop-frag-needed"], 1);
    let text = big_pings(5);
    assert!(text.contains("5 packets transmitted, 5 received"), "{text}");

    // UDP: 1472-byte datagrams with DF (Linux's default) in both directions.
    lab.spawn_in(&to_ns, Path::new(PROBE), &["serve", "7777", "30"])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    let r = output(in_ns(&from, &format!("{PROBE} check udp {to} 7777 1472")));
    assert!(r.is_ok(), "{r:?}");
}

/// XDP decap on the uplink, native on h1 and generic on h2, with a Linux vxlan host h3:
/// every tunnel packet is decapsulated in XDP and delivered by TC, bulk TCP included
/// (on a kernel that gives XDP programs no metadata, the agent says so and XDP only
/// checks: TC decapsulates every one). Then h1 switches mode (generic, then off) by
/// config and restart, traffic crossing after each switch.
#[test]
fn xdp_decap_native_and_generic() {
    let Some(mut lab) = lab(3) else { return };
    lab.write_configs(|_, _| PeerMode::Vxlan).unwrap();
    lab.kernel_vxlan(2).unwrap();
    lab.set_host_option(0, "xdp", "\"native\"").unwrap();
    lab.set_host_option(1, "xdp", "\"generic\"").unwrap();
    lab.start(0).unwrap();
    lab.start(1).unwrap();
    for (a, b) in [(0, 1), (1, 0), (2, 0), (0, 2), (2, 1)] {
        assert_crosses(&mut lab, a, b, a != 2 && b != 2 || a == 2 && b == 0);
    }
    let mut decap = true;
    for (i, mode) in [(0, "native"), (1, "generic")] {
        let stats = output(lab.netpath(i, &["stats", "--json"])).unwrap();
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["agent"]["xdp"], mode);
        decap = stats["agent"]["xdp_decap"].as_bool().unwrap();
        let c = counters(&lab, i);
        let (by_xdp, by_tc) = (
            c["fwd-vxlan-decap-xdp"].as_u64().unwrap(),
            c["fwd-vxlan-decap"].as_u64().unwrap(),
        );
        if decap {
            assert!(by_xdp > 0, "h{}: {c}", i + 1);
            assert_eq!(by_tc, 0, "h{}: XDP saw every tunnel packet: {c}", i + 1);
        } else {
            assert_eq!(by_xdp, 0, "h{}: XDP only checks: {c}", i + 1);
            assert!(by_tc > 0, "h{}: TC decapsulates: {c}", i + 1);
            let log = std::fs::read_to_string(&lab.hosts[i].log).unwrap();
            assert!(
                log.contains("gives XDP programs no metadata"),
                "h{}: the agent says why XDP only checks",
                i + 1
            );
        }
        let ns = lab.hosts[i].ns.clone();
        let link = output(in_ns(&ns, "ip -d link show eth0")).unwrap();
        let shown = if mode == "native" {
            " xdp qdisc"
        } else {
            " xdpgeneric qdisc"
        };
        assert!(link.contains(shown), "h{}: {link}", i + 1);
    }

    for mode in ["generic", "off"] {
        lab.kill_agent(0);
        lab.set_host_option(0, "xdp", &format!("\"{mode}\""))
            .unwrap();
        lab.start(0).unwrap();
        let link = output(in_ns(&lab.hosts[0].ns, "ip -d link show eth0")).unwrap();
        assert_eq!(
            link.contains(" xdpgeneric qdisc"),
            mode == "generic",
            "{mode}: {link}"
        );
        assert!(!link.contains(" xdp qdisc"), "{mode}: {link}");
        let before = counters(&lab, 0);
        assert_crosses(&mut lab, 1, 0, false);
        let after = counters(&lab, 0);
        let grew = |r: &str| after[r].as_u64().unwrap() > before[r].as_u64().unwrap();
        let by_xdp = mode == "generic" && decap;
        assert_eq!(grew("fwd-vxlan-decap-xdp"), by_xdp, "{mode}: {after}");
        assert_eq!(grew("fwd-vxlan-decap"), !by_xdp, "{mode}: {after}");
    }
}
