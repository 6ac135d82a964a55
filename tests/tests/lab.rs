//! End to end in network namespaces: hosts, containers, real packets, the real agent.
//! Every test builds its own lab (unique names) and tears it down, also on failure.

use std::{path::Path, process::Command, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, ip, output, ping, run};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

fn lab(hosts: usize, containers: usize) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let lab = Lab::new(Spec {
        hosts,
        containers,
        locked_down: true,
        outside: false,
    })
    .expect("build lab");
    lab.write_configs(|_, _| PeerMode::Direct).expect("configs");
    Some(lab)
}

#[test]
fn direct_three_hosts_icmp_udp_tcp_both_ways() {
    let Some(mut lab) = lab(3, 1) else { return };
    lab.start_all().unwrap();
    for h in 0..3 {
        let ns = lab.hosts[h].containers[0].ns.clone();
        lab.spawn_in(&ns, Path::new(PROBE), &["serve", "7777", "60"])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    for a in &lab.hosts {
        // The iptables path is shut: netpath must not need it.
        assert_eq!(
            output(in_ns(&a.ns, "sysctl -n net.ipv4.ip_forward"))
                .unwrap()
                .trim(),
            "0"
        );
        let filter = output(in_ns(&a.ns, "iptables -S FORWARD")).unwrap();
        assert!(filter.contains("-P FORWARD DROP"), "{filter}");
        let nat = output(in_ns(&a.ns, "iptables -t nat -S POSTROUTING")).unwrap();
        assert_eq!(nat.trim(), "-P POSTROUTING ACCEPT");
        let routes = output(ip(&a.ns, "route show")).unwrap();
        for b in lab.hosts.iter().filter(|b| b.idx != a.idx) {
            assert!(
                !routes.contains(&b.subnet),
                "kernel route to {}: {routes}",
                b.subnet
            );
            let (from, to) = (&a.containers[0], &b.containers[0]);
            let (sent, got, ttl) = ping(&from.ns, &to.ip, 3, "0.2").unwrap();
            assert_eq!(got, sent, "ping {} -> {}", from.ip, to.ip);
            // Two routers on the way (host a, host b), each decrements the TTL.
            assert_eq!(ttl, Some(62), "TTL of the reply from {}", to.ip);
            for proto in ["udp", "tcp"] {
                let r = output(in_ns(
                    &from.ns,
                    &format!("{PROBE} check {proto} {} 7777", to.ip),
                ));
                assert!(r.is_ok(), "{proto} {} -> {}: {r:?}", from.ip, to.ip);
            }
        }
    }
    for i in 0..3 {
        let s = lab.netpath_json(i, &["stats", "--json"]);
        let reasons: Vec<&str> = s["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["reason"].as_str().unwrap())
            .collect();
        assert!(
            reasons.contains(&"fwd-direct") && reasons.contains(&"fwd-deliver"),
            "{s}"
        );
        assert_eq!(s["totals"]["dropped"], 0, "{s}");
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        for p in peers {
            assert!(p["tx_packets"].as_u64().unwrap() >= 3, "{p}");
            assert!(p["rx_packets"].as_u64().unwrap() >= 3, "{p}");
        }
        let dump = lab.netpath_json(i, &["dump", "counters", "--json"]);
        assert_eq!(
            dump.as_array().unwrap().len(),
            netpath_common::Reason::ALL.len()
        );
        let table = output(lab.netpath(i, &["dump", "peers"])).unwrap();
        assert!(
            table.starts_with("PEER") && table.contains("direct"),
            "{table}"
        );
    }
}

/// Two hosts running netpath, and the (namespace, address) of a container on each, shown
/// to reach each other.
fn two_hosts_up() -> Option<(Lab, String, String)> {
    let mut lab = lab(2, 1)?;
    lab.start_all().unwrap();
    let from = lab.hosts[0].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    assert_eq!(ping(&from, &to, 2, "0.2").unwrap().1, 2);
    Some((lab, from, to))
}

#[test]
fn restart_after_kill_9_loses_nothing() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };

    // The agent dies: the pinned links keep the datapath attached.
    lab.kill_agent(0);
    lab.kill_agent(1);
    assert_eq!(
        ping(&from, &to, 3, "0.1").unwrap().1,
        3,
        "traffic without agents"
    );

    // Continuous ping while the agents come back, die again and come back again.
    let pinger = thread::spawn(move || ping(&from, &to, 600, "0.01").unwrap());
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(500));
        lab.start(0).unwrap();
        lab.start(1).unwrap();
        thread::sleep(Duration::from_millis(300));
        lab.kill_agent(0);
        lab.kill_agent(1);
    }
    lab.start(0).unwrap();
    let (sent, got, _) = pinger.join().unwrap();
    assert_eq!(
        (sent, got),
        (600, 600),
        "packets lost across agent restarts"
    );
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert_eq!(
        log.matches("np_from_bridge on br0 ingress: Replaced")
            .count(),
        3,
        "{log}"
    );
    let s = lab.netpath_json(0, &["stats", "--json"]);
    assert_eq!(s["agent"]["generation"], 4, "{s}");
    // A second agent on the same pin dir is refused while the first runs.
    let second = lab
        .netpath(
            0,
            &["run", "--config", lab.hosts[0].config.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already manages"));
    assert_eq!(s["agent"]["agent_running"], true);
}

#[test]
fn down_removes_everything_and_up_again_works() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };

    let out = output(lab.netpath(0, &["down"])).unwrap();
    assert!(
        out.contains("stopped agent") && out.contains("detached np_from_bridge"),
        "{out}"
    );
    assert!(!lab.hosts[0].pin_dir.exists(), "pin dir left behind");
    assert_eq!(
        ping(&from, &to, 2, "0.2").unwrap().1,
        0,
        "forwarding after down"
    );
    // The host is as it was: the same interfaces, no qdisc or program left on them.
    let tc = output(Command::new("tc").args([
        "-n",
        &lab.hosts[0].ns,
        "filter",
        "show",
        "dev",
        "br0",
        "ingress",
    ]));
    assert!(tc.map(|t| t.trim().is_empty()).unwrap_or(true));
    let err = lab.netpath(0, &["stats"]).output().unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no netpath datapath at"));
    let again = output(lab.netpath(0, &["down"])).unwrap();
    assert!(again.contains("nothing to remove"), "{again}");

    lab.start(0).unwrap();
    assert_eq!(
        ping(&from, &to, 2, "0.2").unwrap().1,
        2,
        "after starting again"
    );
}

#[test]
fn bad_configs_are_refused_before_anything_changes() {
    let Some(mut lab) = lab(2, 1) else { return };
    let good = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    let cases = [
        (
            "\"eth0\"",
            "\"eth7\"",
            "[host].uplink = \"eth7\": no such interface",
        ),
        ("10.244.12.0/24", "10.244.12.0/40", "is not an IPv4 CIDR"),
        (
            "10.244.12.0/24",
            "10.244.11.128/25",
            "overlaps the local subnet",
        ),
        (
            "vni = 42",
            "vni = 16777216",
            "[host].vni = 16777216 is out of range",
        ),
    ];
    let dup = format!(
        "{good}\n[[peer]]\nname = \"h2\"\nsubnet = \"10.244.50.0/24\"\nunderlay = \"198.18.0.50\"\nmode = \"direct\"\n"
    );
    let run_with = |lab: &Lab, text: &str| {
        let path = lab.dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let mut c = lab.netpath(0, &["run", "--config", path.to_str().unwrap()]);
        c.output().unwrap()
    };
    let texts = cases
        .iter()
        .map(|(from, to, want)| (good.replacen(from, to, 1), *want))
        .chain([(dup, "duplicate peer name")]);
    for (text, want) in texts {
        assert_ne!(text, good);
        let out = run_with(&lab, &text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(
            !lab.hosts[0].pin_dir.exists(),
            "{want}: something was pinned"
        );
    }
    // A running datapath is not touched by a refused config either.
    lab.start_all().unwrap();
    let before = output(lab.netpath(0, &["dump", "peers", "--json"])).unwrap();
    let out = run_with(&lab, &good.replacen("vni = 42", "vni = 0", 1));
    assert!(!out.status.success());
    assert_eq!(
        output(lab.netpath(0, &["dump", "peers", "--json"])).unwrap(),
        before
    );
    let (from, to) = (
        &lab.hosts[0].containers[0].ns,
        &lab.hosts[1].containers[0].ip,
    );
    assert_eq!(ping(from, to, 2, "0.2").unwrap().1, 2);
}

#[test]
fn peers_added_live_work_and_survive_a_restart() {
    let Some(mut lab) = lab(3, 1) else { return };
    // h1 starts without h3 in its config.
    let cfg = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    let cut = cfg.find("[[peer]]\nname = \"h3\"").unwrap();
    std::fs::write(&lab.hosts[0].config, &cfg[..cut]).unwrap();
    lab.start_all().unwrap();
    let from = lab.hosts[0].containers[0].ns.clone();
    let to = lab.hosts[2].containers[0].ip.clone();
    assert_eq!(ping(&from, &to, 1, "0.2").unwrap().1, 0);

    let add = [
        "peer",
        "add",
        "h3",
        "--subnet",
        "10.244.13.0/24",
        "--underlay",
        "198.18.0.13",
    ];
    run(lab.netpath(0, &add)).unwrap();
    assert_eq!(ping(&from, &to, 2, "0.2").unwrap().1, 2, "after peer add");
    // The same again is refused, naming the clash.
    let again = lab.netpath(0, &add).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("overlaps peer \"h3\""));

    lab.kill_agent(0);
    lab.start(0).unwrap();
    let list = lab.netpath_json(0, &["peer", "list", "--json"]);
    let h3 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "h3")
        .cloned()
        .unwrap();
    assert_eq!(h3["origin"], "cli");
    assert_eq!(ping(&from, &to, 2, "0.2").unwrap().1, 2, "after restart");

    run(lab.netpath(0, &["peer", "del", "h3"])).unwrap();
    assert_eq!(ping(&from, &to, 1, "0.2").unwrap().1, 0, "after peer del");
    let missing = lab.netpath(0, &["peer", "del", "h9"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no peer named \"h9\"; known peers: h2")
    );
}

#[test]
fn agent_killed_in_the_middle_of_a_large_change_finishes_it_after_restart() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };
    // A large change for host 0: 120 more peers (/28s, map entries only) and 5,000 rules
    // that match none of the test's traffic.
    let mut extra = String::new();
    for i in 0..120 {
        extra += &format!(
            "[[peer]]\nname = \"x{i}\"\nsubnet = \"10.244.{}.{}/28\"\nunderlay = \"198.18.0.{}\"\nmode = \"{}\"\n\n",
            100 + i / 16,
            i % 16 * 16,
            100 + i,
            if i % 2 == 0 { "direct" } else { "vxlan" }
        );
    }
    for i in 0..5000 {
        extra += &format!(
            "[[policy]]\nfrom = \"10.244.{}.{}\"\nto = \"10.244.0.0/16\"\nproto = \"tcp\"\nport = 5432\naction = \"deny\"\n\n",
            200 + i / 256,
            i % 256
        );
    }
    lab.append_config(0, &extra).unwrap();
    let pinger = {
        let (from, to) = (from.clone(), to.clone());
        thread::spawn(move || ping(&from, &to, 1000, "0.01").unwrap())
    };
    lab.kill_agent(0);
    // The agent is killed (SIGKILL) at its 300th map write: inside the peers.
    let cut = lab
        .netpath(
            0,
            &["run", "--config", lab.hosts[0].config.to_str().unwrap()],
        )
        .env("NETPATH_TEST_FAULT", "abort-after:300")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        cut.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let peers = |lab: &Lab| lab.netpath_json(0, &["dump", "peers", "--json"]);
    let rules = |lab: &Lab| lab.netpath_json(0, &["policy", "list", "--json"])["rules"].clone();
    let half = peers(&lab).as_array().unwrap().len();
    assert!(
        half > 1 && half < 121,
        "{half} peers: the change was not cut halfway"
    );
    assert_eq!(
        rules(&lab).as_array().unwrap().len(),
        0,
        "the policy came later"
    );

    // A normal start finishes it: every peer and rule as the config says, nothing more.
    lab.start(0).unwrap();
    let all = peers(&lab);
    let names: std::collections::BTreeSet<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let want: std::collections::BTreeSet<String> = (0..120)
        .map(|i| format!("x{i}"))
        .chain([lab.hosts[1].name.clone()])
        .collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect(),
        "peers after the restart"
    );
    assert_eq!(rules(&lab).as_array().unwrap().len(), 5000);
    let status = lab.netpath_json(0, &["status", "--json"]);
    let routes = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "NP_PEERS_V1")
        .unwrap()["entries"]
        .clone();
    assert_eq!(routes, 121, "one route per peer: {status}");
    // A second restart finds nothing to do.
    lab.kill_agent(0);
    lab.start(0).unwrap();
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    let last = log.lines().rfind(|l| l.contains("reconciled in")).unwrap();
    assert!(
        last.contains("peers: 0 added, 0 updated, 0 removed, 0 restored, 0 stray entries removed")
            && last.contains("policy unchanged"),
        "{last}"
    );
    let (sent, got, _) = pinger.join().unwrap();
    assert_eq!(
        (sent, got),
        (1000, 1000),
        "packets lost while the change was cut and redone"
    );
}

#[test]
fn endpoints_are_learned_from_the_bridge_and_follow_the_containers() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };
    // The first container of each host pinged: each host learned its own.
    let a1 = lab.hosts[0].containers[0].clone();
    lab.learn(0, &a1).unwrap();
    let veth = output(in_ns(&a1.ns, "cat /sys/class/net/eth0/iflink")).unwrap();
    let mac = output(in_ns(&a1.ns, "cat /sys/class/net/eth0/address")).unwrap();
    let rows = lab.netpath_json(0, &["dump", "endpoints", "--json"]);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == a1.ip.as_str())
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["ifindex"].to_string(), veth.trim(), "{row}");
    assert_eq!(row["mac"], mac.trim(), "{row}");
    assert_eq!(row["interface"], "v1", "{row}");

    // A new container nobody has heard from: a peer's first packets to it go through the
    // bridge (whose ARP for it teaches the host), the rest straight into it.
    let fresh = lab.add_container(0).unwrap();
    assert!(!lab.endpoints(0).contains_key(&fresh.ip));
    let via_bridge = lab.counter(0, "fwd-via-bridge");
    let delivered = lab.counter(0, "fwd-deliver");
    let b1 = lab.hosts[1].containers[0].clone();
    let (sent, got, _) = ping(&b1.ns, &fresh.ip, 10, "0.1").unwrap();
    assert_eq!((sent, got), (10, 10));
    assert!(lab.endpoints(0).contains_key(&fresh.ip));
    let fallbacks = lab.counter(0, "fwd-via-bridge") - via_bridge;
    assert!(
        (1..=3).contains(&fallbacks),
        "{fallbacks} through the bridge"
    );
    assert!(lab.counter(0, "fwd-deliver") - delivered >= 8);

    // Kept across an agent's death (pinned) and restart; traffic flows meanwhile.
    let before = lab.endpoints(0);
    lab.kill_agent(0);
    assert_eq!(lab.endpoints(0), before);
    assert_eq!(ping(&from, &to, 3, "0.1").unwrap().1, 3);
    lab.start(0).unwrap();
    assert_eq!(lab.endpoints(0), before);

    // A container that goes (its veth with it) is forgotten.
    output(ip(&lab.hosts[0].ns, "link del v2")).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while lab.endpoints(0).contains_key(&fresh.ip) {
        assert!(
            std::time::Instant::now() < until,
            "endpoint of a removed container kept"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.endpoints(0).contains_key(&a1.ip));
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains(&format!(
            "endpoints: 0 added, 0 updated, 1 removed ({})",
            fresh.ip
        )),
        "{log}"
    );
}

#[test]
fn a_containers_arrival_and_departure_are_followed_without_reading_everything() {
    let Some(mut lab) = lab(1, 3) else {
        return;
    };
    // No periodic reading during the test: only the events can tell the agent.
    lab.append_config(0, "[conntrack]\ngc_interval = 3600\n")
        .unwrap();
    let log_filter = ("RUST_LOG", "info,netpath::agent::containers=debug");
    lab.start_bin(0, &netpath_tests::netpath_bin(), &[log_filter])
        .unwrap();
    let before: Vec<_> = lab.hosts[0].containers.clone();
    for c in &before {
        lab.learn(0, c).unwrap();
    }
    // One more arrives (its veth joins the bridge, its ARP makes the neighbour), and one
    // of the first leaves: each followed from its own events.
    let fresh = lab.add_container(0).unwrap();
    lab.learn(0, &fresh).unwrap();
    let ifindex = |c: &netpath_tests::Container| {
        output(in_ns(&c.ns, "cat /sys/class/net/eth0/iflink"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (new_veth, old_veth) = (ifindex(&fresh), ifindex(&before[0]));
    assert_eq!(lab.endpoints(0)[&fresh.ip].to_string(), new_veth);
    let pin = |i: &str| {
        lab.hosts[0]
            .pin_dir
            .join(format!("links/np_from_container@{i}"))
    };
    assert!(pin(&new_veth).exists(), "the new port has its program");
    output(ip(&lab.hosts[0].ns, "link del v1")).unwrap();
    netpath_tests::wait_for(
        5,
        || !lab.endpoints(0).contains_key(&before[0].ip),
        || format!("{:?} kept after its veth went", before[0].ip),
    );
    let eps = lab.endpoints(0);
    assert_eq!(eps.len(), 3, "{eps:?}");
    assert!(eps.contains_key(&before[1].ip) && eps.contains_key(&before[2].ip));
    assert!(
        !pin(&old_veth).exists(),
        "the program of a port that went is unpinned"
    );
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert_eq!(
        log.matches("containers: read every link").count(),
        1,
        "only the start reads everything:\n{log}"
    );
    assert!(
        log.contains("containers: followed")
            && log.contains("1 ports came")
            && log.contains("1 went"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "endpoints: 0 added, 0 updated, 1 removed ({})",
            before[0].ip
        )),
        "{log}"
    );
}
