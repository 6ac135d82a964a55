//! The operator's tooling against live labs: status, a dump of every map, stats --watch,
//! profile (each program's ns per run on live traffic),
//! the drop monitor (a drop caused on purpose, the in-kernel rate limit), trace (agreeing
//! with what real packets did, changing nothing), doctor, the Prometheus endpoint scraped
//! over HTTP; and completions and man pages generated from the CLI.

use std::{process::Command, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, ip, netpath_bin, output, ping, run};

fn netpath(args: &[&str]) -> std::process::Output {
    Command::new(netpath_bin())
        .args(args)
        .output()
        .expect("run netpath")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = netpath(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {o:?}");
        let text = stdout(&o);
        for word in [
            "policy",
            "publish",
            "peer",
            "stats",
            "dump",
            "status",
            "monitor",
            "trace",
            "doctor",
            "--watch",
            "--pin-dir",
        ] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let o = netpath(&["completions", "tcsh"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("possible values"),
        "{o:?}"
    );
}

#[test]
fn man_pages_for_the_command_and_each_subcommand() {
    let o = netpath(&["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH netpath"), "{page}");
    assert!(page.contains("eBPF datapath"), "{page}");
    let dir = tempdir();
    let o = netpath(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    for page in [
        "netpath.1",
        "netpath-policy-add.1",
        "netpath-stats.1",
        "netpath-bench.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let add = std::fs::read_to_string(dir.join("netpath-policy-add.1")).unwrap();
    assert!(add.contains("action"), "policy add page names its options");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("np-man-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn stats_watch_refuses_bad_intervals() {
    for bad in ["0", "-1", "abc", "7200"] {
        let o = netpath(&["stats", &format!("--watch={bad}")]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("seconds between 0.1 and 3600"), "{bad}: {err}");
    }
    let o = netpath(&["stats", "--count", "2"]);
    assert!(!o.status.success(), "--count without --watch");
}

#[test]
fn stats_watch_shows_rates_of_live_traffic() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let mut lab = Lab::new(Spec::default()).expect("lab");
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.start_all().unwrap();
    let (from, to) = (
        lab.hosts[0].containers[0].ns.clone(),
        lab.hosts[1].containers[0].ip.clone(),
    );
    // Traffic while watching: 10 pings a second for 3 s.
    let pinger = thread::spawn(move || ping(&from, &to, 30, "0.1"));
    thread::sleep(Duration::from_millis(300));
    let out =
        netpath_tests::output(lab.netpath(0, &["stats", "--watch", "1", "--count", "2", "--json"]))
            .unwrap();
    let (sent, got, _) = pinger.join().unwrap().unwrap();
    assert_eq!(got, sent);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for r in &lines {
        let interval = r["interval_s"].as_f64().unwrap();
        assert!((0.9..3.0).contains(&interval), "{r}");
        let fwd = r["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["reason"] == "fwd-direct")
            .unwrap_or_else(|| panic!("no fwd-direct rate: {r}"));
        // 10 echo requests a second leave through host 0; a second's worth, give or take.
        let pps = fwd["packets_per_s"].as_f64().unwrap();
        assert!((4.0..=20.0).contains(&pps), "fwd-direct {pps}/s: {r}");
        let peer = &r["peers"][0];
        assert_eq!(peer["name"], lab.hosts[1].name.as_str());
        assert!(peer["tx_packets_per_s"].as_f64().unwrap() > 4.0, "{r}");
    }
    // The text form redraws in place.
    let text = netpath_tests::output(lab.netpath(0, &["stats", "--watch", "0.2", "--count", "1"]))
        .unwrap();
    assert!(text.starts_with("\x1b[H\x1b[2J"), "{text:?}");
    assert!(text.contains("rates over the last"), "{text}");
}

#[test]
fn profile_times_this_hosts_programs_on_live_traffic() {
    let Some(lab) = direct_lab(Spec::default(), &[]) else {
        return;
    };
    let (from, to) = (
        lab.hosts[0].containers[0].ns.clone(),
        lab.hosts[1].containers[0].ip.clone(),
    );
    // 100 echo requests a second for 2 s: out through h1's container port, the replies
    // in through its uplink.
    let pinger = thread::spawn(move || ping(&from, &to, 200, "0.01"));
    thread::sleep(Duration::from_millis(300));
    let out = netpath_tests::output(lab.netpath(0, &["profile", "--secs", "1", "--json"])).unwrap();
    let (sent, got, _) = pinger.join().unwrap().unwrap();
    assert_eq!(got, sent);
    let p: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let progs = p["programs"].as_array().unwrap();
    let of = |name: &str| {
        progs
            .iter()
            .find(|c| c["program"] == name)
            .unwrap_or_else(|| panic!("{name} not profiled: {p}"))
    };
    for name in ["np_from_container", "np_from_uplink"] {
        let c = of(name);
        let runs = c["runs"].as_u64().unwrap();
        assert!(
            (40..=400).contains(&runs),
            "{name}: {runs} runs in a second: {p}"
        );
        let ns = c["ns_per_run"].as_f64().unwrap();
        assert!(ns > 0.0 && ns < 100_000.0, "{name}: {ns} ns per run");
    }
    // Only this host's programs: the ids are those its status shows attached.
    let status = lab.netpath_json(0, &["status", "--json"]);
    let attached: Vec<u64> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["prog_id"].as_u64())
        .collect();
    // (clsact filters, on kernels without TCX, have no link that says their program.)
    for name in ["np_from_bridge", "np_from_uplink"]
        .into_iter()
        .filter(|_| !attached.is_empty())
    {
        let id = of(name)["id"].as_u64().unwrap();
        assert!(
            attached.contains(&id),
            "{name} {id} is not among {attached:?}"
        );
    }
    // Each program once (the other host's datapath has programs of the same names).
    let mut names: Vec<&str> = progs
        .iter()
        .map(|c| c["program"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), progs.len(), "{p}");
    // The text form; and a pin dir without a datapath is a clear error.
    let text = netpath_tests::output(lab.netpath(0, &["profile", "--secs", "0.2"])).unwrap();
    assert!(
        text.starts_with("PROGRAM") && text.contains("NS/RUN"),
        "{text}"
    );
    let none = netpath(&[
        "--pin-dir",
        "/sys/fs/bpf/np-no-such-dir",
        "profile",
        "--secs",
        "0.2",
    ]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("no netpath datapath"), "{err}");
}

/// A two-host lab, direct mode, agents running; None when labs cannot run here.
fn direct_lab(spec: Spec, extra: &[(usize, &str)]) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut lab = Lab::new(spec).expect("lab");
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    for (i, text) in extra {
        lab.append_config(*i, text).unwrap();
    }
    lab.start_all().unwrap();
    Some(lab)
}

/// Runs `netpath ARGS` on host `i`, returning exit success and stdout (for commands
/// whose exit code says something).
fn on_host(lab: &Lab, i: usize, args: &[&str]) -> (bool, String) {
    let o = lab.netpath(i, args).output().expect("run netpath");
    (o.status.success(), stdout(&o))
}

#[test]
fn status_shows_attachments_versions_fill_and_the_agent() {
    let Some(mut lab) = direct_lab(Spec::default(), &[]) else {
        return;
    };
    let s = lab.netpath_json(0, &["status", "--json"]);
    assert_eq!(s["host"], lab.hosts[0].name.as_str());
    assert_eq!(s["agent"]["running"], true, "{s}");
    assert!(s["agent"]["uptime_s"].as_u64().unwrap() < 600, "{s}");
    assert_eq!(s["versions"]["same_build"], true, "{s}");
    assert_eq!(s["versions"]["datapath"], env!("CARGO_PKG_VERSION"));
    let att = s["attachments"].as_array().unwrap();
    let find = |prog: &str| {
        att.iter()
            .find(|a| a["program"] == prog)
            .unwrap_or_else(|| panic!("{prog} missing: {s}"))
    };
    for (prog, iface) in [("np_from_bridge", "br0"), ("np_from_uplink", "eth0")] {
        let a = find(prog);
        assert_eq!(a["interface"], iface, "{a}");
        assert_eq!(a["hook"], "tc ingress");
        assert_eq!(a["how"], "tcx");
        assert_eq!(a["state"], "attached");
        assert!(a["prog_id"].as_u64().unwrap() > 0);
        assert_eq!(a["tag"].as_str().unwrap().len(), 16, "{a}");
    }
    // One container program per container port.
    let ports = att
        .iter()
        .filter(|a| a["program"] == "np_from_container")
        .count();
    assert_eq!(ports, lab.hosts[0].containers.len(), "{s}");
    let peers = s["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "NP_PEERS_V1")
        .unwrap();
    assert_eq!(peers["entries"], 1);
    assert_eq!(peers["max_entries"], 65536);
    assert_eq!(peers["type"], "lpm trie");
    assert_eq!(
        s["maps"].as_array().unwrap().len(),
        netpath_common::map_names::ALL.len(),
        "every map listed"
    );
    assert!(s["problems"].as_array().unwrap().is_empty(), "{s}");
    let (ok, text) = on_host(&lab, 0, &["status"]);
    assert!(ok, "{text}");
    for want in [
        "agent: running",
        "np_from_bridge",
        "NP_CT_V1",
        "problems: none",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // Without its agent the datapath goes on, and status says so (exit 1).
    lab.kill_agent(0);
    let (ok, text) = on_host(&lab, 0, &["status"]);
    assert!(!ok, "status exits 1 with a problem");
    assert!(text.contains("agent: NOT RUNNING"), "{text}");
    assert!(text.contains("no agent is running"), "{text}");
}

#[test]
fn every_map_dumps_as_a_table_and_as_json() {
    let Some(lab) = direct_lab(Spec::default(), &[]) else {
        return;
    };
    let peer_net = lab.hosts[1].subnet.clone();
    let c0 = lab.hosts[0].containers[0].ip.clone();
    output(lab.netpath(
        0,
        &[
            "policy",
            "add",
            "--from",
            &peer_net,
            "--to",
            &c0,
            "--proto",
            "tcp",
            "--port",
            "5000-5001",
            "--action",
            "deny",
        ],
    ))
    .unwrap();
    let names = [
        "config",
        "peers",
        "underlay",
        "counters",
        "agent",
        "conntrack",
        "conntrack-info",
        "nat",
        "ports",
        "policies",
        "groups",
        "policy-src",
        "policy-dst",
        "policy-rules",
        "reject-limit",
        "events",
        "build",
    ];
    for name in names {
        let (ok, text) = on_host(&lab, 0, &["dump", name]);
        assert!(ok && !text.is_empty(), "dump {name}: {text}");
        lab.netpath_json(0, &["dump", name, "--json"]);
    }
    // By pinned name too: every map status lists.
    let s = lab.netpath_json(0, &["status", "--json"]);
    for m in s["maps"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        lab.netpath_json(0, &["dump", name, "--json"]);
    }
    // Addresses, ports and actions as people write them.
    let cfg = lab.netpath_json(0, &["dump", "config", "--json"]);
    assert_eq!(cfg["host_address"], lab.hosts[0].underlay.as_str());
    assert_eq!(cfg["subnet"], lab.hosts[0].subnet.as_str());
    let u = lab.netpath_json(0, &["dump", "underlay", "--json"]);
    assert_eq!(u[0]["underlay"], lab.hosts[1].underlay.as_str());
    assert_eq!(u[0]["peer"], lab.hosts[1].name.as_str());
    let (_, rules) = on_host(&lab, 0, &["dump", "policy-rules"]);
    assert!(
        rules.contains("tcp") && rules.contains("5000-5001"),
        "{rules}"
    );
    assert!(rules.contains("rule 1 deny"), "{rules}");
    let (_, dst) = on_host(&lab, 0, &["dump", "policy-dst"]);
    assert!(dst.contains(&format!("{c0}/32")), "{dst}");
    let (_, agent) = on_host(&lab, 0, &["dump", "agent"]);
    assert!(agent.contains(" UTC"), "times in UTC: {agent}");
    let o = lab.netpath(0, &["dump", "nosuchmap"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values"));
}

/// Routes the outside host to host `i`'s container subnet: what it sends there is
/// dropped as drop-not-published.
fn route_outside_to(lab: &Lab, i: usize) -> String {
    let out = lab.outside().ns.clone();
    run(ip(
        &out,
        &format!(
            "route add {} via {}",
            lab.hosts[i].subnet, lab.hosts[i].underlay
        ),
    ))
    .unwrap();
    out
}

#[test]
fn monitor_sees_a_drop_caused_on_purpose() {
    let spec = Spec {
        outside: true,
        ..Spec::default()
    };
    let Some(lab) = direct_lab(spec, &[]) else {
        return;
    };
    let out = route_outside_to(&lab, 0);
    let target = lab.hosts[0].containers[0].ip.clone();
    let mon = lab
        .netpath(
            0,
            &["monitor", "--json", "--count", "2", "--duration", "20"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let _ = ping(&out, &target, 2, "0.2");
    let o = mon.wait_with_output().unwrap();
    let text = stdout(&o);
    let drops: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "drop")
        .collect();
    assert_eq!(drops.len(), 2, "{text}");
    for d in &drops {
        assert_eq!(d["reason"], "drop-not-published", "{d}");
        assert_eq!(d["src"], netpath_tests::OUTSIDE_ADDR);
        assert_eq!(d["dst"], target.as_str());
        assert_eq!(d["proto"], "icmp");
        assert_eq!(d["interface"], "eth0");
        assert_eq!(d["icmp"], serde_json::json!([8, 0]));
    }
}

/// `netpath monitor --debug --json` on host `i` while `traffic` runs: its decisions.
fn decisions_during(lab: &Lab, i: usize, traffic: impl FnOnce()) -> Vec<serde_json::Value> {
    let mon = lab
        .netpath(i, &["monitor", "--debug", "--json", "--duration", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    traffic();
    let o = mon.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "decision")
        .collect()
}

#[test]
fn the_decision_log_explains_each_packet_it_matches_and_switches_off() {
    let spec = Spec {
        containers: 2,
        ..Spec::default()
    };
    let Some(lab) = direct_lab(spec, &[]) else {
        return;
    };
    let (c1, c1_ip) = (
        lab.hosts[0].containers[0].ns.clone(),
        lab.hosts[0].containers[0].ip.clone(),
    );
    let c2 = lab.hosts[0].containers[1].ns.clone();
    let peer_ip = lab.hosts[1].containers[0].ip.clone();
    let (ok, text) = on_host(&lab, 0, &["debug", "on", "--match", &c1_ip]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("for packets from or to {c1_ip}/32")),
        "{text}"
    );
    // status says it is on (it needs attention: it costs while on).
    let (ok, text) = on_host(&lab, 0, &["status"]);
    assert!(!ok && text.contains("the decision log is on"), "{text}");
    let got = decisions_during(&lab, 0, || {
        assert_eq!(ping(&c1, &peer_ip, 3, "0.2").unwrap().1, 3);
        // Not matched: another container's traffic.
        assert_eq!(ping(&c2, &peer_ip, 3, "0.2").unwrap().1, 3);
    });
    let out: Vec<_> = got
        .iter()
        .filter(|d| d["program"] == "np_from_container" && d["src"] == c1_ip.as_str())
        .collect();
    // Each echo request (ping may count its first one again after a neighbour lookup).
    assert!(out.len() >= 3, "{got:?}");
    for d in &out {
        assert_eq!(d["reason"], "fwd-direct", "{d}");
        assert_eq!(d["action"], "forward", "{d}");
        assert_eq!(d["dst"], peer_ip.as_str(), "{d}");
        assert_eq!(d["proto"], "icmp", "{d}");
        assert_eq!(d["peer"], "h2", "{d}");
    }
    // The replies, delivered from the uplink.
    let back = got
        .iter()
        .filter(|d| d["program"] == "np_from_uplink" && d["dst"] == c1_ip.as_str())
        .count();
    assert!(back >= 3, "{got:?}");
    assert!(
        got.iter()
            .all(|d| d["src"] == c1_ip.as_str() || d["dst"] == c1_ip.as_str()),
        "{got:?}"
    );
    // Off: nothing more.
    let (ok, text) = on_host(&lab, 0, &["debug", "off"]);
    assert!(ok && text.contains("is off"), "{text}");
    let (ok, text) = on_host(&lab, 0, &["status"]);
    assert!(ok && !text.contains("decision log"), "{text}");
    let got = decisions_during(&lab, 0, || {
        assert_eq!(ping(&c1, &peer_ip, 2, "0.2").unwrap().1, 2);
    });
    assert!(got.is_empty(), "{got:?}");
    // A bad network is refused by the CLI.
    let (ok, _) = on_host(&lab, 0, &["debug", "on", "--match", "10.244.300.0/24"]);
    assert!(!ok);
}

#[test]
fn monitor_rate_limit_suppresses_a_flood_and_counts_every_drop() {
    let spec = Spec {
        outside: true,
        ..Spec::default()
    };
    let Some(lab) = direct_lab(spec, &[(0, "[monitor]\nrate = 2\n")]) else {
        return;
    };
    let out = route_outside_to(&lab, 0);
    let target = lab.hosts[0].containers[0].ip.clone();
    let before = lab.counter(0, "drop-not-published");
    let mon = lab
        .netpath(0, &["monitor", "--json", "--duration", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    // A flood: one echo request every 10 ms or sooner, none answered.
    let _ = in_ns(&out, &format!("ping -q -f -c 200 -W 0.01 {target}")).output();
    let o = mon.wait_with_output().unwrap();
    let text = stdout(&o);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let drops = events.iter().filter(|e| e["event"] == "drop").count() as u64;
    let suppressed: u64 = events
        .iter()
        .filter(|e| e["event"] == "suppressed")
        .map(|e| e["suppressed"].as_u64().unwrap())
        .sum();
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    // At most 2 a second per CPU over ~4 s (windows may straddle the edges).
    assert!(
        drops >= 1 && drops <= 2 * cpus * 6,
        "{drops} events: {text}"
    );
    assert!(suppressed > 100, "suppressed {suppressed}: {text}");
    assert!(events.iter().any(|e| e["rate_per_cpu"] == 2), "{text}");
    // Every drop is counted whatever the monitor shows.
    let counted = lab.counter(0, "drop-not-published") - before;
    assert!(counted >= 200, "counted {counted}");
    assert!(
        drops + suppressed <= counted,
        "{drops} + {suppressed} > {counted}"
    );
}

#[test]
fn trace_agrees_with_what_packets_really_do_and_changes_nothing() {
    let Some(lab) = direct_lab(Spec::default(), &[]) else {
        return;
    };
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let (a1, b1) = (a.containers[0].clone(), b.containers[0].clone());
    output(lab.netpath(
        0,
        &[
            "policy", "add", "--from", &b.subnet, "--to", &a1.ip, "--proto", "tcp", "--port",
            "5000", "--action", "deny",
        ],
    ))
    .unwrap();

    // A container of host 0 pings one of host 1.
    let t = lab.netpath_json(0, &["trace", "--from", &a1.ip, "--to", &b1.ip, "--json"]);
    assert_eq!(t["program"], "np_from_container", "routed from its veth");
    assert_eq!(t["reason"], "fwd-direct", "{t}");
    assert_eq!(t["outcome"], "forward");
    assert_eq!(t["peer"], b.name.as_str());
    assert_eq!(t["leaves_by"], "eth0");
    assert_eq!(
        t["rule"], 0,
        "policy is on, no rule matches pings: the default"
    );
    assert!(t["out_packet"].as_str().unwrap().contains("ttl 63"), "{t}");
    // Tracing changed no live counter (of this path, of the peer, of the rules) and
    // recorded no flow. (Other counters move with the lab's own ARP and IPv6 traffic.)
    let state = |lab: &Lab| {
        (
            lab.counter(0, "fwd-direct"),
            lab.netpath_json(0, &["dump", "peers", "--json"]),
            lab.netpath_json(0, &["dump", "conntrack", "--json"]),
            lab.netpath_json(0, &["policy", "list", "--json"]),
        )
    };
    let before = state(&lab);
    assert_eq!(before.0, 0, "nothing forwarded yet");
    lab.netpath_json(0, &["trace", "--from", &a1.ip, "--to", &b1.ip, "--json"]);
    assert_eq!(before, state(&lab));
    // The real packet does what the trace said.
    let fwd = lab.counter(0, "fwd-direct");
    let (sent, got, _) = ping(&a1.ns, &b1.ip, 1, "0.2").unwrap();
    assert_eq!((sent, got), (1, 1));
    // ping() sends one more echo to read the TTL: two requests left by fwd-direct.
    assert_eq!(lab.counter(0, "fwd-direct"), fwd + 2);

    // Host 1's container opens TCP to port 5000 of host 0's: denied by rule 1 on host 0.
    let t = lab.netpath_json(
        0,
        &[
            "trace", "--from", &b1.ip, "--to", &a1.ip, "--proto", "tcp", "--port", "5000", "--json",
        ],
    );
    assert_eq!(t["program"], "np_from_uplink");
    assert_eq!(t["reason"], "drop-policy-deny", "{t}");
    assert_eq!(t["rule"], 1, "{t}");
    assert_eq!(t["outcome"], "drop");
    let rule_hits = |lab: &Lab| {
        lab.netpath_json(0, &["policy", "list", "--json"])["rules"][0]["packets"]
            .as_u64()
            .unwrap()
    };
    let (deny, hits) = (lab.counter(0, "drop-policy-deny"), rule_hits(&lab));
    let connect = format!("echo > /dev/tcp/{}/5000", a1.ip);
    let _ = Command::new("ip")
        .args([
            "netns", "exec", &b1.ns, "timeout", "2", "bash", "-c", &connect,
        ])
        .output();
    assert!(
        lab.counter(0, "drop-policy-deny") > deny,
        "the SYN was denied"
    );
    assert!(rule_hits(&lab) > hits, "under rule 1");
    // Port 5001 is not covered: the trace says the default allows it.
    let t = lab.netpath_json(
        0,
        &[
            "trace", "--from", &b1.ip, "--to", &a1.ip, "--proto", "tcp", "--port", "5001", "--json",
        ],
    );
    assert_eq!(t["reason"], "fwd-deliver", "{t}");
    assert_eq!(t["rule"], 0);
    // a1 pinged above: the host knows it, the packet goes straight into it.
    let veth = lab.endpoints(0)[&a1.ip];
    assert!(
        t["leaves_by"]
            .as_str()
            .unwrap()
            .contains("straight into the container"),
        "{t}"
    );
    let step = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["what"] == "endpoint")
        .unwrap_or_else(|| panic!("no endpoint step: {t}"));
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("(ifindex {veth})")),
        "{t}"
    );
    let (ok, text) = on_host(
        &lab,
        0,
        &[
            "trace", "--from", &b1.ip, "--to", &a1.ip, "--proto", "tcp", "--port", "5000",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("decided by rule 1"), "{text}");
    assert!(text.contains("verdict: drop (drop-policy-deny)"), "{text}");
    // tcp without a port is refused with the reason.
    let o = lab
        .netpath(
            0,
            &["trace", "--from", &b1.ip, "--to", &a1.ip, "--proto", "tcp"],
        )
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--port"),
        "{o:?}"
    );
}

#[test]
fn doctor_passes_a_healthy_host_and_names_a_silent_peer() {
    let Some(lab) = direct_lab(Spec::default(), &[]) else {
        return;
    };
    let (ok, text) = on_host(&lab, 0, &["doctor", "--wait", "2"]);
    assert!(ok, "a healthy lab host: {text}");
    for check in [
        "kernel",
        "bpffs",
        "datapath",
        "rp_filter",
        "mtu",
        "endpoints",
        "netfilter",
        "conntrack",
        "peers",
    ] {
        assert!(text.contains(check), "{check}: {text}");
    }
    // A peer whose underlay address nobody holds.
    output(lab.netpath(
        0,
        &[
            "peer",
            "add",
            "ghost",
            "--subnet",
            "10.244.99.0/24",
            "--underlay",
            "198.18.0.99",
        ],
    ))
    .unwrap();
    // Strict rp_filter on the uplink.
    netpath_tests::sysctl(&lab.hosts[0].ns, "net.ipv4.conf.eth0.rp_filter", "1").unwrap();
    let o = lab
        .netpath(0, &["doctor", "--json", "--wait", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "exit 1 with findings");
    let f: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let of = |check: &str| {
        f.iter()
            .find(|x| x["check"] == check && x["level"] != "ok")
            .unwrap_or_else(|| panic!("no {check} finding: {f:?}"))
    };
    let peers = of("peers");
    assert!(
        peers["detail"]
            .as_str()
            .unwrap()
            .contains("ghost (198.18.0.99)"),
        "{peers}"
    );
    assert!(
        !peers["detail"]
            .as_str()
            .unwrap()
            .contains(&lab.hosts[1].name),
        "{peers}"
    );
    let rp = of("rp_filter");
    assert!(rp["fix"].as_str().unwrap().contains("rp_filter=2"), "{rp}");
}

/// GET `path` from 127.0.0.1:`port` inside network namespace `ns`: status line and body.
fn http_get(ns: &str, port: u16, path: &str) -> (String, String) {
    let ns = format!("/run/netns/{ns}");
    let path = path.to_owned();
    thread::spawn(move || {
        use std::io::{Read, Write};
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    })
    .join()
    .unwrap()
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let Some(lab) = direct_lab(
        Spec::default(),
        &[(0, "[metrics]\nlisten = \"127.0.0.1:9464\"\n")],
    ) else {
        return;
    };
    let (a1, b1) = (
        lab.hosts[0].containers[0].clone(),
        lab.hosts[1].containers[0].clone(),
    );
    ping(&a1.ns, &b1.ip, 3, "0.2").unwrap();
    let ns = lab.hosts[0].ns.clone();
    let (status, body) = http_get(&ns, 9464, "/metrics");
    assert!(status.contains("200"), "{status}: {body}");
    assert!(body.contains("# TYPE netpath_packets counter"), "{body}");
    let fwd = sample(
        &body,
        r#"netpath_packets_total{reason="fwd-direct",verdict="forward"}"#,
    )
    .unwrap_or_else(|| panic!("no fwd-direct: {body}"));
    assert!(fwd >= 3.0, "{fwd}");
    let peer = format!(
        r#"netpath_peer_packets_total{{peer="{}",mode="direct",direction="tx"}}"#,
        lab.hosts[1].name
    );
    assert!(sample(&body, &peer).unwrap() >= 3.0, "{body}");
    assert_eq!(
        sample(&body, r#"netpath_map_entries{map="NP_PEERS_V1"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"netpath_map_max_entries{map="NP_PEERS_V1"}"#),
        Some(65536.0)
    );
    assert!(
        body.lines().any(|l| l.starts_with("netpath_agent_info{")
            && l.contains(&format!("host=\"{}\"", lab.hosts[0].name))
            && l.ends_with(" 1")),
        "{body}"
    );
    assert!(
        body.contains("netpath_drop_events_total{result=\"suppressed\"}"),
        "{body}"
    );
    let on_br0 = format!(
        r#"netpath_network_endpoints{{network="br0",bridge="br0",subnet="{}",origin="config",reachable="true"}}"#,
        lab.hosts[0].subnet
    );
    assert!(sample(&body, &on_br0).unwrap_or(0.0) >= 1.0, "{body}");
    // Per-rule counters once a rule exists; the scrape follows the maps.
    output(lab.netpath(
        0,
        &[
            "policy", "add", "--from", &a1.ip, "--to", &b1.ip, "--action", "allow",
        ],
    ))
    .unwrap();
    ping(&a1.ns, &b1.ip, 2, "0.2").unwrap();
    let (_, body) = http_get(&ns, 9464, "/metrics");
    let hits = sample(
        &body,
        r#"netpath_policy_rule_packets_total{rule="1",action="allow"}"#,
    )
    .unwrap_or_else(|| panic!("no rule 1: {body}"));
    assert!(hits >= 2.0, "{body}");
    let (status, _) = http_get(&ns, 9464, "/");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn bad_monitor_and_metrics_settings_are_refused_before_anything_starts() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let lab = Lab::new(Spec::default()).expect("lab");
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.append_config(
        0,
        "[metrics]\nlisten = \"localhost\"\n\n[monitor]\nrate = 2000000\n",
    )
    .unwrap();
    let cfg = lab.hosts[0].config.to_str().unwrap().to_owned();
    let o = lab
        .netpath(0, &["check", "--config", &cfg])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("metrics.listen") && err.contains("127.0.0.1:9464"),
        "{err}"
    );
    assert!(err.contains("monitor.rate"), "{err}");
}
