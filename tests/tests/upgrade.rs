//! Upgrades across a change of map layout (issue 19): a datapath of this build, under
//! traffic, is taken over by the `layout-test` build of the same tree, whose `NP_CT` (an
//! LRU hash of flows) and `NP_PEER_STATS` (per-CPU counters) have a field more. The agent
//! migrates them: every flow and count is kept, no packet lost. A downgrade is refused
//! with nothing changed; an upgrade killed while copying starts again, one killed after
//! its swap is finished by the next start.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netpath_tests::{Lab, PeerMode, Spec, in_ns, netpath_bin, output, ping};

const PROBE: &str = env!("CARGO_BIN_EXE_np-probe");

/// The layout-test build, which `cargo xtask test` makes; a clear failure without it.
fn new_build() -> PathBuf {
    let bin = netpath_tests::netpath_layout_test_bin();
    assert!(
        bin.exists(),
        "{} is missing: `cargo xtask test` builds it (cargo build -p netpath --features layout-test, copied there)",
        bin.display()
    );
    bin
}

/// Two hosts (h1 with `containers` containers, masquerade on, tcp 8080 published to its
/// first container's 7000) and the outside host running an echo server on 7000.
fn lab(containers: usize) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut lab = Lab::new(Spec {
        hosts: 2,
        containers,
        locked_down: true,
        outside: true,
    })
    .expect("build lab");
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.set_host_option(0, "masquerade", "true").unwrap();
    let c1 = lab.hosts[0].containers[0].ip.clone();
    lab.append_config(
        0,
        &format!(
            "[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"{c1}\"\nport = 7000\n"
        ),
    )
    .unwrap();
    lab.start_all().unwrap();
    let (out_ns, c1_ns) = (
        lab.outside().ns.clone(),
        lab.hosts[0].containers[0].ns.clone(),
    );
    for ns in [&out_ns, &c1_ns] {
        lab.spawn_in(ns, Path::new(PROBE), &["serve", "7000", "300"])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    Some(lab)
}

/// `np-probe hold` processes: open connections held until `go` appears; killed on drop,
/// so a failed test leaves none behind.
struct Holders {
    go: PathBuf,
    children: Vec<(String, Child)>,
}

impl Holders {
    /// `per` connections from each of `containers` to the outside host, all open (each
    /// echoed once) when this returns.
    fn open(lab: &Lab, containers: &[String], per: usize) -> Holders {
        let go = lab.dir.join("go");
        let _ = std::fs::remove_file(&go);
        let mut h = Holders {
            go: go.clone(),
            children: Vec::new(),
        };
        for ns in containers {
            let child = Command::new("ip")
                .args(["netns", "exec", ns, PROBE, "hold"])
                .arg(&lab.outside().addr)
                .arg("7000")
                .arg(per.to_string())
                .arg(&go)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            h.children.push((ns.clone(), child));
        }
        for (ns, c) in &mut h.children {
            let mut line = String::new();
            BufReader::new(c.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), format!("{per} open"), "connections from {ns}");
        }
        h
    }

    /// Lets every connection echo again; returns each holder's last line.
    fn again(mut self) -> Vec<(String, bool, String)> {
        std::fs::write(&self.go, "").unwrap();
        let mut out = Vec::new();
        for (ns, mut c) in std::mem::take(&mut self.children) {
            let mut rest = String::new();
            std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut rest).unwrap();
            let ok = c.wait().unwrap().success();
            out.push((ns, ok, rest.trim().to_owned()));
        }
        out
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The map files pinned in host `i`'s pin dir, and anything else there.
fn pinned(lab: &Lab, i: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let names = |p: PathBuf| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = &lab.hosts[i].pin_dir;
    (names(root.join("maps")), names(root.clone()))
}

/// Host `i`'s agent log once it holds `needle` (the migration finishes just after the
/// agent says it attached); panics with the log after 10 s.
fn log_with(lab: &Lab, i: usize, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&lab.hosts[i].log).unwrap();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Host 0's pin dir holds both layouts of NP_CT and the migration's `mark`.
fn halfway(lab: &Lab, mark: &str) {
    let (maps, root) = pinned(lab, 0);
    assert!(
        maps.contains("NP_CT_V1") && maps.contains("NP_CT_V2"),
        "{maps:?}"
    );
    assert!(root.contains(mark), "{root:?}");
}

/// The kernel's id of the map pinned at `path`.
fn map_id(path: &Path) -> u64 {
    let out = output(
        Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(path),
    )
    .unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// Peer h2's packets sent, as host 0's netpath `bin` reports them.
fn tx_to_peer(lab: &Lab, bin: &Path) -> u64 {
    let out = output(lab.netpath_bin(0, bin, &["stats", "--json"])).unwrap();
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tx_packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn an_upgrade_across_a_layout_change_keeps_every_flow_and_count() {
    let Some(mut lab) = lab(3) else { return };
    let new = new_build();
    let old = netpath_bin();
    let h1 = lab.hosts[0].underlay.clone();
    let out = lab.outside().addr.clone();
    let out_ns = lab.outside().ns.clone();
    let cs: Vec<String> = lab.hosts[0]
        .containers
        .iter()
        .map(|c| c.ns.clone())
        .collect();
    let peer_c = lab.hosts[1].containers[0].ip.clone();

    // 10,002 masqueraded TCP connections, open and idle, from h1's three containers.
    let holders = Holders::open(&lab, &cs, 3334);
    let flows = lab.netpath_json(0, &["dump", "conntrack", "--json"]);
    assert!(
        flows.as_array().unwrap().len() >= 10_002,
        "conntrack holds fewer flows"
    );

    // Traffic through the upgrade: a 100/s ping to the peer host's container, an iperf3
    // stream to the outside, request/response through the published port.
    lab.spawn_in(&out_ns, Path::new("iperf3"), &["-s", "-1"])
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let pinger = {
        let (from, to) = (cs[0].clone(), peer_c.clone());
        thread::spawn(move || ping(&from, &to, 1200, "0.01").unwrap())
    };
    let stream = {
        let (from, to) = (cs[1].clone(), out.clone());
        thread::spawn(move || output(in_ns(&from, &format!("iperf3 -J -t 10 -c {to}"))))
    };
    let rr = {
        let (from, to) = (out_ns.clone(), h1.clone());
        thread::spawn(move || output(in_ns(&from, &format!("{PROBE} rr {to} 8080 10"))))
    };
    thread::sleep(Duration::from_secs(3));

    let pins = lab.hosts[0].pin_dir.join("maps");
    let old_ids = [
        map_id(&pins.join("NP_CT_V1")),
        map_id(&pins.join("NP_PEER_STATS_V1")),
    ];
    let tx_before = tx_to_peer(&lab, &old);
    // The upgrade: the old agent goes, the new build starts on its datapath.
    lab.kill_agent(0);
    let t = Instant::now();
    lab.start_bin(0, &new, &[]).unwrap();
    eprintln!("new agent attached in {:?}", t.elapsed());

    let (sent, got, _) = pinger.join().unwrap();
    assert_eq!(
        (sent, got),
        (1200, 1200),
        "pings lost in the upgrade\n{}",
        lab.diagnose(&[0, 1])
    );
    let iperf = stream.join().unwrap().expect("iperf3 through the upgrade");
    let iperf: serde_json::Value = serde_json::from_str(&iperf).unwrap();
    let seconds: Vec<f64> = iperf["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap())
        .collect();
    assert!(
        seconds.len() >= 10 && seconds.iter().all(|b| *b > 1e6),
        "the iperf3 stream stalled: {seconds:?} bit/s"
    );
    let rr = rr
        .join()
        .unwrap()
        .expect("request/response through the published port");
    eprintln!("iperf3 {seconds:?} bit/s; rr {rr}");

    // Every held connection answers again, through conntrack entries of the new layout.
    for (ns, ok, line) in holders.again() {
        assert!(
            ok,
            "held connections from {ns}: {line}\n{}",
            lab.diagnose(&[0])
        );
    }
    // New flows too, and the published port.
    for ns in &cs {
        output(in_ns(ns, &format!("{PROBE} check tcp {out} 7000"))).expect("a new flow");
    }
    output(in_ns(&out_ns, &format!("{PROBE} check tcp {h1} 8080"))).expect("published port");

    let log = log_with(&lab, 0, "migrated NP_PEER_STATS_V1 -> NP_PEER_STATS_V2");
    let line = log
        .lines()
        .find(|l| l.contains("migrated NP_CT_V1 -> NP_CT_V2"))
        .unwrap_or_else(|| panic!("no migration line:\n{log}"));
    let entries: usize = line
        .split("NP_CT_V2: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(entries >= 10_002, "{line}");
    for l in log.lines().filter(|l| l.contains("migrat")) {
        eprintln!("{l}");
    }
    // The counts went across: what was sent to the peer before the upgrade is still
    // counted, and every ping with it.
    let tx_after = tx_to_peer(&lab, &new);
    assert!(
        tx_after >= tx_before && tx_after >= 1200,
        "peer tx {tx_before} before, {tx_after} after"
    );

    // Only the new layout is pinned, no mark is left, and the old maps are freed.
    let (maps, root) = pinned(&lab, 0);
    for m in ["NP_CT_V2", "NP_PEER_STATS_V2"] {
        assert!(maps.contains(m), "{maps:?}");
    }
    for m in ["NP_CT_V1", "NP_PEER_STATS_V1"] {
        assert!(!maps.contains(m), "{maps:?}");
    }
    assert_eq!(root, BTreeSet::from(["links".into(), "maps".into()]));
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in old_ids {
        while Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "old map {id} still exists");
            thread::sleep(Duration::from_millis(100));
        }
    }

    // A downgrade is refused, saying what to do, with nothing changed.
    lab.kill_agent(0);
    let err = lab.start(0).unwrap_err().to_string();
    assert!(
        err.contains("has a newer layout than this netpath's NP_CT_V1")
            && err.contains("netpath down"),
        "{err}"
    );
    assert_eq!(pinned(&lab, 0), (maps, root));
    let (sent, got, _) = ping(&cs[0], &peer_c, 5, "0.1").unwrap();
    assert_eq!(sent, got, "traffic after the refused downgrade");
    // The older CLI says whose datapath it is.
    let status = lab.netpath(0, &["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && text.contains("another layout"),
        "{text}"
    );
    // The new build takes it again.
    lab.start_bin(0, &new, &[]).unwrap();
    output(in_ns(&cs[0], &format!("{PROBE} check tcp {out} 7000"))).expect("after");
    lab.teardown().unwrap();
}

#[test]
fn an_upgrade_killed_while_copying_starts_again_and_one_killed_after_its_swap_finishes() {
    let Some(mut lab) = lab(1) else { return };
    let new = new_build();
    let cs = vec![lab.hosts[0].containers[0].ns.clone()];
    let out = lab.outside().addr.clone();
    let holders = Holders::open(&lab, &cs, 1500);

    // Killed at its 700th write: in the copy of the conntrack table (1500 flows).
    lab.kill_agent(0);
    let r = lab.start_bin(0, &new, &[("NETPATH_TEST_FAULT", "abort-after:700")]);
    assert!(r.is_err(), "the agent was to die in the copy");
    halfway(&lab, "migrating-copy");
    // Nothing changed for packets: the old programs still run on the old maps.
    output(in_ns(&cs[0], &format!("{PROBE} check tcp {out} 7000"))).expect("during");

    // The next start removes the partial copy and migrates from scratch; it is killed
    // once its programs are swapped, before the old maps go.
    let _ = lab.start_bin(0, &new, &[("NETPATH_TEST_FAULT", "abort-at:swapped")]);
    let pid = lab.agent_pid(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
    {
        assert!(
            Instant::now() < deadline,
            "the agent was to die after its swap"
        );
        thread::sleep(Duration::from_millis(50));
    }
    lab.kill_agent(0);
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("removed NP_CT_V2, left half-copied"), "{log}");
    halfway(&lab, "migrating-swap");
    // The new programs run, on the new maps: a new flow works.
    output(in_ns(&cs[0], &format!("{PROBE} check tcp {out} 7000"))).expect("after the swap");

    // The next start finishes: the new maps are kept, what is left is carried.
    lab.start_bin(0, &new, &[]).unwrap();
    log_with(
        &lab,
        0,
        "migrated NP_CT_V1 -> NP_CT_V2: resumed after its swap",
    );
    for (ns, ok, line) in holders.again() {
        assert!(
            ok,
            "held connections from {ns}: {line}\n{}",
            lab.diagnose(&[0])
        );
    }
    let (maps, root) = pinned(&lab, 0);
    assert!(
        !maps.contains("NP_CT_V1") && !root.contains("migrating-copy"),
        "{maps:?} {root:?}"
    );
    lab.teardown().unwrap();
}

#[test]
fn a_datapath_without_a_map_of_this_build_is_named_by_the_cli_and_completed_by_the_agent() {
    // What a netpath from before NP_NETWORKS left: every other map pinned, the programs
    // running. The new CLI says what to do; the new agent adds the map, nothing is cut.
    let Some(mut lab) = Lab::hosts(2, 1) else {
        return;
    };
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.start_all().unwrap();
    lab.kill_agent(0);
    let map = lab.hosts[0]
        .pin_dir
        .join("maps")
        .join(netpath_common::map_names::NETWORKS);
    std::fs::remove_file(&map).unwrap();
    let o = lab.netpath(0, &["status"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("has no NP_NETWORKS_V1: an older netpath made it. Restart its agent"),
        "{err}"
    );
    lab.start(0).unwrap();
    assert!(map.exists());
    let to = lab.hosts[1].containers[0].ip.clone();
    let (sent, got, _) = ping(&lab.hosts[0].containers[0].ns, &to, 3, "0.1").unwrap();
    assert_eq!(got, sent);
    let nets = lab.netpath_json(0, &["network", "list", "--json"]);
    assert_eq!(nets[0]["bridge"], "br0", "{nets}");
    lab.teardown().unwrap();
}
