//! Masquerade and published ports end to end, with the nat table flushed and the FORWARD
//! policy DROP on every host (the incident of issue 4: nothing may depend on iptables).
//! An outside host on the fabric runs a real TCP server and a UDP echo; it has no route to
//! any container subnet, so every reply it sends can only reach a container through
//! netpath's NAT.

use std::{path::Path, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, output, ping, run};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

fn lab(hosts: usize, containers: usize) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let lab = Lab::new(Spec {
        hosts,
        containers,
        locked_down: true,
        outside: true,
    })
    .expect("build lab");
    lab.write_configs(|_, _| PeerMode::Direct).expect("configs");
    for i in 0..hosts {
        lab.set_host_option(i, "masquerade", "true").unwrap();
    }
    Some(lab)
}

/// `np-probe ARGS` in `ns`: Ok(stdout) when it exits 0.
fn probe(ns: &str, args: &str) -> anyhow::Result<String> {
    output(in_ns(ns, &format!("{PROBE} {args}")))
}

#[test]
fn masquerade_and_published_ports_work_with_the_nat_table_flushed() {
    let Some(mut lab) = lab(2, 2) else { return };
    let h1 = lab.hosts[0].underlay.clone();
    let c1 = lab.hosts[0].containers[0].ns.clone();
    let c1_ip = lab.hosts[0].containers[0].ip.clone();
    let c2 = lab.hosts[0].containers[1].ns.clone();
    let peer_c = lab.hosts[1].containers[0].ns.clone();
    let out_ns = lab.outside().ns.clone();
    let out = lab.outside().addr.clone();
    lab.append_config(
        0,
        &format!(
            "[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"{c1_ip}\"\nport = 7000\n\n\
             [[publish]]\nproto = \"udp\"\nhost_port = 8081\ncontainer = \"{c1_ip}\"\nport = 7000\n"
        ),
    )
    .unwrap();
    lab.start_all().unwrap();
    for ns in [&out_ns, &c1] {
        lab.spawn_in(ns, Path::new(PROBE), &["serve", "7000", "120"])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    // The incident, once more while everything runs.
    for h in &lab.hosts {
        run(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
        run(in_ns(&h.ns, "iptables -P FORWARD DROP")).unwrap();
    }

    // Masquerade: ICMP, UDP, TCP from both containers of h1.
    for ns in [&c1, &c2] {
        let (sent, got, _) = ping(ns, &out, 3, "0.2").unwrap();
        assert_eq!(got, sent, "ping {out} from {ns}");
        for proto in ["udp", "tcp"] {
            let r = probe(ns, &format!("check {proto} {out} 7000"));
            assert!(r.is_ok(), "{proto} to the outside from {ns}: {r:?}");
        }
    }
    // The same source port from two containers to the same server: both work.
    for ns in [&c1, &c2] {
        for proto in ["udp", "tcp"] {
            let r = probe(ns, &format!("check {proto} {out} 7000 0 40001"));
            assert!(r.is_ok(), "{proto} from port 40001 in {ns}: {r:?}");
        }
    }
    // ICMP port unreachable and TCP RST from the outside reach the container.
    for proto in ["udp", "tcp"] {
        let r = probe(&c1, &format!("refused {proto} {out} 7999"));
        assert!(r.is_ok(), "{proto} to a closed port must be refused: {r:?}");
    }
    assert!(lab.counter(0, "fwd-nat-icmp-error") >= 1);

    // Published ports, from the outside and from a container of the peer host (whose own
    // netpath masquerades it to h1's underlay address).
    for (ns, who) in [(&out_ns, "outside"), (&peer_c, "peer container")] {
        for (proto, port) in [("tcp", 8080), ("udp", 8081)] {
            let r = probe(ns, &format!("check {proto} {h1} {port}"));
            assert!(r.is_ok(), "{proto}/{port} from the {who}: {r:?}");
        }
    }
    // A port that is not published is the host's own: nothing listens, its stack refuses.
    let r = probe(&out_ns, &format!("refused tcp {h1} 8089"));
    assert!(r.is_ok(), "unpublished host port: {r:?}");
    // A container's own address from outside is dropped, even where the outside host
    // routes the container subnet to h1 (Docker 28 drops these in the raw table).
    let dropped = lab.counter(0, "drop-not-published");
    run(in_ns(
        &out_ns,
        &format!("ip route add 10.244.11.0/24 via {h1}"),
    ))
    .unwrap();
    let r = probe(&out_ns, &format!("check tcp {c1_ip} 7000"));
    assert!(r.is_err(), "container reached directly: {r:?}");
    assert!(lab.counter(0, "drop-not-published") > dropped);

    // Publish and unpublish live.
    run(lab.netpath(
        0,
        &["publish", "add", "tcp", "8082", &format!("{c1_ip}:7000")],
    ))
    .unwrap();
    let ports = lab.netpath_json(0, &["publish", "list", "--json"]);
    let listed: Vec<String> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{} {}:{} {}",
                p["proto"].as_str().unwrap(),
                p["host_port"],
                p["container"].as_str().unwrap(),
                p["port"],
                p["origin"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            format!("tcp/8080 {c1_ip}:7000 config"),
            format!("tcp/8082 {c1_ip}:7000 cli"),
            format!("udp/8081 {c1_ip}:7000 config"),
        ]
    );
    assert!(probe(&out_ns, &format!("check tcp {h1} 8082")).is_ok());
    let bad = output(lab.netpath(0, &["publish", "add", "tcp", "8083", "10.244.12.2:80"]));
    assert!(
        format!("{bad:?}").contains("not a container address of this host"),
        "{bad:?}"
    );
    run(lab.netpath(0, &["publish", "del", "tcp", "8082"])).unwrap();
    assert!(probe(&out_ns, &format!("check tcp {h1} 8082")).is_err());

    // What the tables and counters say.
    let flows = lab.netpath_json(0, &["dump", "conntrack", "--json"]);
    let kinds: Vec<&str> = flows
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"masquerade") && kinds.contains(&"published"),
        "{kinds:?}"
    );
    assert!(
        !lab.netpath_json(0, &["dump", "nat", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let text = output(lab.netpath(0, &["dump", "conntrack"])).unwrap();
    assert!(text.starts_with("PROTO") && text.contains(&out), "{text}");
    for reason in [
        "fwd-masquerade",
        "fwd-masquerade-reply",
        "fwd-published",
        "fwd-published-reply",
    ] {
        assert!(lab.counter(0, reason) > 0, "{reason}");
    }
    // Replies and published ports went straight into the containers, past the bridge
    // (whose FORWARD policy is DROP): only the first packets to a container not learned
    // yet went through it.
    let straight = lab.counter(0, "fwd-masquerade-reply") + lab.counter(0, "fwd-published");
    let via_bridge = lab.counter(0, "fwd-via-bridge");
    assert!(via_bridge * 5 < straight, "{via_bridge} of {straight}");
    // Nothing of this lives in iptables.
    let nat = output(in_ns(&lab.hosts[0].ns, "iptables -t nat -S")).unwrap();
    assert!(
        !nat.contains("MASQUERADE") && !nat.contains("DNAT"),
        "{nat}"
    );
    lab.teardown().unwrap();
}

#[test]
fn thousands_of_flows_through_the_nat_and_the_collector_empties_it() {
    let Some(mut lab) = lab(1, 3) else { return };
    lab.append_config(
        0,
        "[conntrack]\nudp = 15\ntcp_closing = 15\ngc_interval = 1\n",
    )
    .unwrap();
    lab.start_all().unwrap();
    let out_ns = lab.outside().ns.clone();
    let out = lab.outside().addr.clone();
    lab.spawn_in(&out_ns, Path::new(PROBE), &["serve", "7000", "120"])
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    // Every container at once: 1000 UDP and 1000 TCP flows each, all open together; each
    // flow must get its own message back (a reply delivered to the wrong socket fails).
    let handles: Vec<_> = lab.hosts[0]
        .containers
        .iter()
        .flat_map(|c| {
            ["udp", "tcp"].map(|proto| {
                let ns = c.ns.clone();
                let out = out.clone();
                thread::spawn(move || {
                    (
                        ns.clone(),
                        proto,
                        probe(&ns, &format!("flows {proto} {out} 7000 1000")),
                    )
                })
            })
        })
        .collect();
    for h in handles {
        let (ns, proto, r) = h.join().unwrap();
        assert!(r.is_ok(), "{proto} flows from {ns}: {r:?}");
    }
    let flows = lab.netpath_json(0, &["dump", "conntrack", "--json"]);
    let n = flows.as_array().unwrap().len();
    assert!(n >= 6000, "{n} flows in conntrack, want 6000");
    // Idle for longer than the timeouts (15 s; collected every second): all gone.
    let mut left = n;
    for _ in 0..40 {
        thread::sleep(Duration::from_secs(1));
        left = lab
            .netpath_json(0, &["dump", "conntrack", "--json"])
            .as_array()
            .unwrap()
            .len();
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "flows left after their timeouts");
    assert!(
        lab.netpath_json(0, &["dump", "nat", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let stats = lab.netpath_json(0, &["stats", "--json"]);
    assert!(
        stats["conntrack"]["expired_total"].as_u64().unwrap() >= 6000,
        "{}",
        stats["conntrack"]
    );
    lab.teardown().unwrap();
}
