//! Networks across hosts on real Docker hosts with real etcd: the overlay seed's workflow
//! without swarm. Three lab hosts, each with its dockerd and agent (with `[etcd]` and
//! `[docker]`, so the agent serves its IPAM plugin and makes etcd's networks on its
//! Docker); `netpath network create` on one host, `docker run --net --ip` on each.

use std::time::{Duration, Instant};

use netpath_tests::{
    Lab, Spec,
    docker::{DockerOptions, have_dockerd, ping_from, serve_on, wait_for},
    output, probe_bin,
};

const NET1: &str = "10.244.64.0/24";

/// Three Docker hosts on one etcd, agents running. None (skipped) where labs or dockerd
/// cannot run.
fn fleet_docker_lab() -> Option<Lab> {
    fleet_docker_lab_with(&DockerOptions::default(), &[])
}

/// [`fleet_docker_lab`] with Docker's settings `o`, and `extra` config text per host.
fn fleet_docker_lab_with(o: &DockerOptions, extra: &[(usize, &str)]) -> Option<Lab> {
    if !netpath_tests::can_run_lab() || !have_dockerd() {
        eprintln!("skipped: needs root and Debian's docker.io (cargo xtask setup)");
        return None;
    }
    let mut lab = Lab::new(Spec {
        hosts: 3,
        containers: 0,
        locked_down: true,
        outside: true,
    })
    .expect("build lab");
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    for i in 0..3 {
        lab.dockerd(i, o).unwrap();
        lab.set_host_option(i, "masquerade", "true").unwrap();
        lab.use_docker(i).unwrap();
    }
    for (i, text) in extra {
        lab.append_config(*i, text).unwrap();
    }
    lab.start_all().unwrap();
    Some(lab)
}

fn config(lab: &Lab, i: usize) -> String {
    lab.hosts[i].config.display().to_string()
}

/// `netpath network create NAME --subnet SUBNET --mode MODE` on host `i`.
fn create(lab: &Lab, i: usize, name: &str, subnet: &str, mode: &str) {
    let c = config(lab, i);
    let args = [
        "network", "create", name, "--subnet", subnet, "--mode", mode, "--config", &c,
    ];
    output(lab.netpath(i, &args)).unwrap();
}

/// The names of host `i`'s Docker networks.
fn docker_networks(lab: &Lab, i: usize) -> Vec<String> {
    let out = lab
        .docker(i, &["network", "ls", "--format", "{{.Name}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until every host's Docker has network `name`; returns how long that took.
fn seen_everywhere(lab: &Lab, name: &str) -> Duration {
    let t = Instant::now();
    for i in 0..lab.hosts.len() {
        wait_for(&format!("{name} on host {i}"), 15, || {
            docker_networks(lab, i).iter().any(|n| n == name)
        });
    }
    t.elapsed()
}

/// Serves a 2 MiB file of random bytes over HTTP (busybox httpd, port 8080) in container
/// `name` of host `i`; returns its md5.
fn serve_blob(lab: &Lab, i: usize, name: &str) -> String {
    let sh = "mkdir -p /www && busybox dd if=/dev/urandom of=/www/blob bs=1024 count=2048 2>/dev/null && busybox httpd -p 8080 -h /www && busybox md5sum /www/blob";
    let out = output(lab.docker(i, &["exec", name, "sh", "-c", sh])).unwrap();
    out.split_whitespace().next().unwrap().to_owned()
}

/// The md5 of the 2 MiB body that container `name` of host `i` fetches with an HTTP GET
/// of `/blob` from `addr` port 8080 (busybox nc: its wget crashes, being static).
fn fetch(lab: &Lab, i: usize, name: &str, addr: &str) -> String {
    let sh = format!(
        "printf 'GET /blob HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 {addr} 8080 | busybox tail -c 2097152 | busybox md5sum"
    );
    let url = format!("http://{addr}:8080/blob");
    let out = lab
        .docker(i, &["exec", name, "sh", "-c", &sh])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url} in {name}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap_or("").to_owned()
}

/// The seed's workflow, word for word but for the driver: `network create` on node1, the
/// network on the others, `--ip` and `--add-host` on each, ping and a 2 MB HTTP transfer
/// both ways; a `--ip` another host holds is refused naming it; a removed container's
/// route goes on the other hosts.
fn seed_workflow(mode: &str) {
    let Some(lab) = fleet_docker_lab() else {
        return;
    };
    create(&lab, 0, "net1", NET1, mode);
    let took = seen_everywhere(&lab, "net1");
    eprintln!("net1 ({mode}) on every host's Docker after {took:?}");

    let a = serve_on(
        &lab,
        0,
        "test1",
        "net1",
        &["--ip", "10.244.64.3", "--add-host", "test2:10.244.64.4"],
    );
    let b = serve_on(
        &lab,
        1,
        "test2",
        "net1",
        &["--ip", "10.244.64.4", "--add-host", "test1:10.244.64.3"],
    );
    assert_eq!((a.as_str(), b.as_str()), ("10.244.64.3", "10.244.64.4"));
    wait_for("test1 reaches test2", 10, || {
        ping_from(&lab, 0, "test1", "test2") == 3
    });
    assert_eq!(ping_from(&lab, 1, "test2", "test1"), 3);
    // Same subnet from inside: no gateway between them, the other's MAC is the bridge's.
    let route =
        output(lab.docker(0, &["exec", "test1", "ip", "route", "get", "10.244.64.4"])).unwrap();
    assert!(!route.contains(" via "), "{route}");

    let md5_b = serve_blob(&lab, 1, "test2");
    assert_eq!(fetch(&lab, 0, "test1", "10.244.64.4"), md5_b);
    let md5_a = serve_blob(&lab, 0, "test1");
    assert_eq!(fetch(&lab, 1, "test2", "10.244.64.3"), md5_a);

    // The address test1 holds, asked for on host 3: refused, naming host 1.
    let probe = probe_bin().display().to_string();
    let clash = lab
        .docker(2, &["run", "-d", "--name", "clash", "--net", "net1"])
        .args([
            "--ip",
            "10.244.64.3",
            "np-probe",
            &probe,
            "serve",
            "7000",
            "60",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(!clash.status.success(), "{clash:?}");
    assert!(
        err.contains(&format!("in use on host {}", lab.hosts[0].name)),
        "{err}"
    );
    // Without --ip: an address nobody holds.
    let c = serve_on(&lab, 2, "test3", "net1", &[]);
    assert!(c != a && c != b && c.starts_with("10.244.64."), "{c}");
    wait_for("test3 reaches test1", 10, || {
        ping_from(&lab, 2, "test3", "10.244.64.3") == 3
    });

    // Gone on every host within a second or so of its removal.
    let routed = |i: usize| -> u64 {
        let v = lab.netpath_json(i, &["network", "list", "--json"]);
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["network"] == "net1")
            .map_or(0, |n| {
                n["across_hosts"]["remote_containers"].as_u64().unwrap_or(0)
            })
    };
    wait_for("host 1 routes to test2 and test3", 10, || routed(0) == 2);
    output(lab.docker(1, &["rm", "-f", "test2"])).unwrap();
    let t = Instant::now();
    wait_for("test2's route gone on host 1", 10, || routed(0) == 1);
    wait_for("test2's route gone on host 3", 10, || routed(2) == 1);
    eprintln!(
        "test2's route gone from hosts 1 and 3 {:?} after docker rm",
        t.elapsed()
    );
    let show = lab.netpath_json(
        0,
        &[
            "network",
            "show",
            "net1",
            "--config",
            &config(&lab, 0),
            "--json",
        ],
    );
    assert_eq!(show["vni"], 4096, "{show}");
    assert!(show["hosts"].get(&lab.hosts[1].name).is_none(), "{show}");
    assert_eq!(
        show["hosts"][&lab.hosts[0].name],
        serde_json::json!(["10.244.64.3"]),
        "{show}"
    );
}

#[test]
fn the_seed_workflow_in_vxlan() {
    seed_workflow("vxlan");
}

#[test]
fn the_seed_workflow_direct() {
    seed_workflow("direct");
}

/// `probe check tcp ADDR 7000` from container `name` of host `i`: whether it echoed.
fn tcp_from(lab: &Lab, i: usize, name: &str, to: &str) -> bool {
    let probe = probe_bin().display().to_string();
    lab.docker(i, &["exec", name, &probe, "check", "tcp", to, "7000"])
        .output()
        .unwrap()
        .status
        .success()
}

/// Two networks across hosts are apart, as two networks of one host are; a container on
/// both reaches each; a container on a network across hosts and a local one; `-p` of a
/// network's container from the outside host with the nat table flushed; the way out
/// masqueraded or not, per the network's option.
#[test]
fn networks_across_hosts_are_apart_and_reach_out_as_dockers_do() {
    use netpath_tests::in_ns;
    let Some(mut lab) = fleet_docker_lab_with(
        &DockerOptions::default(),
        &[(0, "[metrics]\nlisten = \"127.0.0.1:9464\"\n")],
    ) else {
        return;
    };
    create(&lab, 0, "net1", NET1, "vxlan");
    create(&lab, 1, "net2", "10.244.65.0/24", "direct");
    let c = config(&lab, 2);
    let quiet = [
        "network",
        "create",
        "quiet",
        "--subnet",
        "10.244.66.0/24",
        "--no-masquerade",
        "--config",
        &c,
    ];
    output(lab.netpath(2, &quiet)).unwrap();
    for n in ["net1", "net2", "quiet"] {
        seen_everywhere(&lab, n);
    }
    let c1 = serve_on(&lab, 0, "c1", "net1", &[]);
    let c2 = serve_on(&lab, 1, "c2", "net2", &[]);
    let both = serve_on(&lab, 1, "cboth", "net1", &[]);
    output(lab.docker(1, &["network", "connect", "net2", "cboth"])).unwrap();
    let both2 = lab.docker_addr(1, "cboth", "net2").unwrap();
    output(lab.docker(2, &["network", "create", "loc"])).unwrap();
    let cl = serve_on(&lab, 2, "cl", "loc", &[]);
    output(lab.docker(2, &["network", "connect", "net1", "cl"])).unwrap();
    let c3 = serve_on(&lab, 2, "c3", "net2", &[]);
    serve_on(&lab, 2, "cq", "quiet", &[]);

    // Each network's own containers, on any host.
    wait_for("cboth reaches c1 (net1)", 10, || {
        tcp_from(&lab, 1, "cboth", &c1)
    });
    wait_for("c3 reaches cboth (net2)", 10, || {
        tcp_from(&lab, 2, "c3", &both2)
    });
    wait_for("c1 reaches cl (net1)", 10, || {
        let cl1 = lab.docker_addr(2, "cl", "net1").unwrap();
        tcp_from(&lab, 0, "c1", &cl1)
    });
    assert!(tcp_from(&lab, 2, "c3", &c2));
    assert!(tcp_from(&lab, 0, "c1", &both));
    assert!(tcp_from(&lab, 1, "cboth", &c3));
    // Never another network's: net2's to net1's on another host, the local network's
    // address of a container to one across hosts, quiet's to net1's.
    let isolated =
        lab.counter(0, "drop-network-isolated") + lab.counter(1, "drop-network-isolated");
    assert!(!tcp_from(&lab, 1, "c2", &c1), "net2 reached net1");
    assert!(
        !tcp_from(&lab, 0, "c1", &cl),
        "net1 reached loc on another host"
    );
    assert!(!tcp_from(&lab, 2, "cq", &c1), "quiet reached net1");
    assert!(
        !tcp_from(&lab, 0, "c1", &both2),
        "net1 reached net2's address"
    );
    let now = lab.counter(0, "drop-network-isolated") + lab.counter(1, "drop-network-isolated");
    assert!(now > isolated, "isolation not counted: {isolated} -> {now}");
    tools_tell_networks_across_hosts(&lab, &c1, &both, &c2, &c3, &both2);

    // -p of a net1 container, from the outside host, with Docker's DNAT flushed; the way
    // out through netpath's masquerade (net1) or not at all (quiet: no MASQUERADE rule).
    output(
        lab.docker(
            1,
            &[
                "run",
                "-d",
                "--name",
                "pub",
                "--net",
                "net1",
                "-p",
                "8081:7000",
            ],
        )
        .args([
            "np-probe",
            &probe_bin().display().to_string(),
            "serve",
            "7000",
            "3600",
        ]),
    )
    .unwrap();
    for h in &lab.hosts {
        output(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
    }
    let probe = probe_bin().display().to_string();
    let out = lab.outside().ns.clone();
    let h2 = lab.hosts[1].underlay.clone();
    wait_for("pub's port from the outside", 10, || {
        in_ns(&out, &format!("{probe} check tcp {h2} 8081"))
            .output()
            .unwrap()
            .status
            .success()
    });
    lab.spawn_in(&out, &probe_bin(), &["serve", "7000", "120"])
        .unwrap();
    let outside = lab.outside().addr.clone();
    wait_for("c1 reaches the outside host", 5, || {
        tcp_from(&lab, 0, "c1", &outside)
    });
    assert!(lab.counter(0, "fwd-masquerade") > 0);
    assert!(
        !tcp_from(&lab, 2, "cq", &outside),
        "quiet went out masqueraded"
    );
}

/// What trace, status, peer list, metrics and doctor say of the isolation test's networks:
/// c1 (net1, vxlan, host 0), both (net1 and net2 at both2, host 1), c2 (net2, host 1),
/// c3 (net2, direct, host 2).
fn tools_tell_networks_across_hosts(
    lab: &Lab,
    c1: &str,
    both: &str,
    c2: &str,
    c3: &str,
    both2: &str,
) {
    let c = config(lab, 0);
    let vni = lab.netpath_json(0, &["network", "show", "net1", "--config", &c, "--json"])["vni"]
        .as_u64()
        .unwrap();
    let h2 = lab.hosts[1].name.clone();
    // net1's container to its own network's on host 1: encapsulated with net1's VNI.
    let t = lab.netpath_json(0, &["trace", "--from", c1, "--to", both, "--json"]);
    assert_eq!(t["reason"], "fwd-vxlan-encap", "{t}");
    assert_eq!(t["peer"], h2.as_str(), "{t}");
    assert!(
        t["out_packet"]
            .as_str()
            .unwrap()
            .contains(&format!("vni {vni}:")),
        "{t}"
    );
    let said = t["steps"].to_string();
    assert!(
        said.contains("network net1") && said.contains("across hosts"),
        "{t}"
    );
    assert!(said.contains(&format!("on host {h2}")), "{t}");
    assert!(said.contains("one LAN across hosts"), "{t}");
    // The way back, as host 1 sends it: decapsulated and delivered.
    let t = lab.netpath_json(0, &["trace", "--from", both, "--to", c1, "--json"]);
    assert_eq!(t["program"], "np_from_uplink", "{t}");
    assert_eq!(t["reason"], "fwd-vxlan-decap", "{t}");
    assert_eq!(t["outcome"], "forward", "{t}");
    // net2 is direct: unencapsulated to host 2.
    let t = lab.netpath_json(1, &["trace", "--from", both2, "--to", c3, "--json"]);
    assert_eq!(t["reason"], "fwd-direct", "{t}");
    // Two networks: apart, and the trace says so.
    let t = lab.netpath_json(1, &["trace", "--from", c2, "--to", c1, "--json"]);
    assert_eq!(t["reason"], "drop-network-isolated", "{t}");
    assert_eq!(t["outcome"], "drop", "{t}");
    assert!(t["steps"].to_string().contains("another network"), "{t}");

    let status = output(lab.netpath(0, &["status"])).unwrap();
    assert!(status.contains("across hosts: 3 networks"), "{status}");
    assert!(
        status.contains("IPAM plugin of networks across hosts served"),
        "{status}"
    );
    let peers = lab.netpath_json(0, &["peer", "list", "--json"]);
    let on_h2 = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == h2.as_str())
        .unwrap_or_else(|| panic!("no peer {h2}: {peers}"));
    // cboth (on net1 and net2) and c2 (net2).
    assert_eq!(on_h2["across_hosts_containers"], 3, "{peers}");
    let metrics = metrics(&lab.hosts[0].ns);
    let series = format!(
        "netpath_network_remote_endpoints{{network=\"net1\",subnet=\"{NET1}\",mode=\"vxlan\",vni=\"{vni}\"}} "
    );
    let n: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}: {metrics}"));
    assert_eq!(n, 2, "net1's cboth (host 1) and cl (host 2): {metrics}");
    assert!(
        metrics.contains("netpath_docker{what=\"ipam_plugin\"} 1"),
        "{metrics}"
    );

    // doctor: all three agree on host 0; a Docker network of the same name that netpath
    // did not make fails on host 2; without the agent the plugin does not answer.
    let doctor = |i: usize| {
        let c = config(lab, i);
        let out = lab
            .netpath(i, &["doctor", "--config", &c, "--json", "--wait", "0.2"])
            .output()
            .unwrap();
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "across-hosts")
            .cloned()
            .collect::<Vec<_>>()
    };
    let d = doctor(0);
    assert!(d.iter().all(|f| f["level"] == "ok"), "{d:?}");
    assert!(
        d.iter()
            .any(|f| f["detail"].as_str().unwrap().contains("answers on")),
        "{d:?}"
    );
    assert_eq!(
        d.iter()
            .filter(|f| f["detail"]
                .as_str()
                .unwrap()
                .contains("Docker's agrees with etcd"))
            .count(),
        3,
        "{d:?}"
    );
    output(lab.docker(
        2,
        &["network", "create", "--subnet", "10.244.98.0/24", "odd"],
    ))
    .unwrap();
    create(lab, 0, "odd", "10.244.97.0/24", "vxlan");
    let d = doctor(2);
    let odd = d
        .iter()
        .find(|f| f["detail"].as_str().unwrap().contains("network odd"))
        .unwrap_or_else(|| panic!("odd not told: {d:?}"));
    assert_eq!(odd["level"], "fail", "{odd}");
    let detail = odd["detail"].as_str().unwrap();
    assert!(
        detail.contains("subnet 10.244.98.0/24, etcd's is 10.244.97.0/24")
            && detail.contains("label netpath.network=(none)"),
        "{odd}"
    );
    assert!(
        odd["fix"]
            .as_str()
            .unwrap()
            .contains("docker network rm odd"),
        "{odd}"
    );
    output(lab.docker(2, &["network", "rm", "odd"])).unwrap();
    output(lab.netpath(0, &["network", "rm", "odd", "--config", &c])).unwrap();
}

/// The agent's metrics (`[metrics] listen = "127.0.0.1:9464"`) in namespace `ns`.
fn metrics(ns: &str) -> String {
    let ns = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9464)).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    })
    .join()
    .unwrap()
}

/// A ping every 100 ms from container `name` of host `i` to `to`, `count` of them, in the
/// background; join it for how many were answered.
fn pinging(lab: &Lab, i: usize, name: &str, to: &str, count: u32) -> std::process::Child {
    let n = count.to_string();
    lab.docker(
        i,
        &["exec", name, "ping", "-c", &n, "-i", "0.1", "-W", "1", to],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

fn answered(ping: std::process::Child) -> u32 {
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(" packets received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ping summary: {text}"))
}

/// Every restart beside dockerd: the agent killed and started again under traffic (no
/// ping lost; a `docker run` meanwhile waits for it, then runs); dockerd restarted with
/// live-restore under traffic; dockerd started before the agent with a restart-policy
/// container on the network; etcd away: running containers keep talking, a new address
/// is refused with an error that says why; a host that died has its containers' routes
/// dropped with its lease and its addresses freed after the grace period.
#[test]
fn restarts_beside_dockerd_keep_the_networks_flows() {
    let o = DockerOptions {
        live_restore: true,
        ..DockerOptions::default()
    };
    let Some(mut lab) = fleet_docker_lab_with(&o, &[]) else {
        return;
    };
    for i in 0..3 {
        lab.kill_agent(i);
        let path = &lab.hosts[i].config;
        let t = std::fs::read_to_string(path).unwrap();
        let t = t.replace("lease_ttl = 5\n", "lease_ttl = 5\naddress_grace = 3\n");
        std::fs::write(path, t).unwrap();
        lab.start(i).unwrap();
    }
    create(&lab, 0, "net1", NET1, "vxlan");
    seen_everywhere(&lab, "net1");
    let c1 = serve_on(&lab, 0, "c1", "net1", &[]);
    serve_on(&lab, 1, "c2", "net1", &[]);
    wait_for("c2 reaches c1", 10, || ping_from(&lab, 1, "c2", &c1) == 3);

    // The agent of host 1, killed and started again under traffic; a docker run meanwhile.
    let ping = pinging(&lab, 1, "c2", &c1, 60);
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent(0);
    let probe = probe_bin().display().to_string();
    let mut late = lab.docker(0, &["run", "-d", "--name", "late", "--net", "net1"]);
    late.args(["np-probe", &probe, "serve", "7000", "3600"]);
    let t = Instant::now();
    let late = std::thread::spawn(move || late.output().unwrap());
    std::thread::sleep(Duration::from_secs(1));
    lab.start(0).unwrap();
    let late = late.join().unwrap();
    assert!(
        late.status.success(),
        "docker run while the agent restarted: {late:?}"
    );
    eprintln!("docker run while the agent was away: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(answered(ping), 60, "pings lost while the agent restarted");

    // dockerd of host 1 restarted with live-restore, under traffic.
    let ping = pinging(&lab, 1, "c2", &c1, 60);
    std::thread::sleep(Duration::from_secs(1));
    lab.restart_dockerd(0, &o).unwrap();
    assert_eq!(answered(ping), 60, "pings lost while dockerd restarted");
    let late_addr = lab.docker_addr(0, "late", "net1").unwrap();
    wait_for("c2 reaches late", 10, || {
        ping_from(&lab, 1, "c2", &late_addr) == 3
    });

    // dockerd before the agent: host 3's restart-policy container on net1 comes up once
    // the agent is there.
    let mut always = lab.docker(2, &["run", "-d", "--name", "always", "--restart", "always"]);
    always.args(["--net", "net1", "np-probe", &probe, "serve", "7000", "3600"]);
    output(&mut always).unwrap();
    lab.kill_agent(2);
    let plain = DockerOptions::default();
    lab.restart_dockerd(2, &plain).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.start(2).unwrap();
    let log = lab
        .dir
        .join(format!("{}-docker/dockerd.log", lab.hosts[2].name));
    netpath_tests::wait_for(
        60,
        || {
            lab.docker(2, &["inspect", "-f", "{{.State.Running}}", "always"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
        },
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            format!(
                "always runs again; dockerd says:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        },
    );
    let always_addr = lab.docker_addr(2, "always", "net1").unwrap();
    wait_for("c1 reaches always", 15, || {
        ping_from(&lab, 0, "c1", &always_addr) == 3
    });

    // Host 3 dies: its containers' routes go with its lease, its addresses after the
    // grace period.
    lab.kill_agent(2);
    let routes = |lab: &Lab| {
        lab.netpath_json(0, &["dump", "endpoints", "--json"])
            .to_string()
    };
    wait_for("host 3's containers unrouted on host 1", 20, || {
        !routes(&lab).contains(&format!("\"{always_addr}\""))
    });
    let held = |lab: &Lab| {
        lab.etcdctl("get --prefix --keys-only /netpath/addresses/")
            .unwrap()
    };
    wait_for("host 3's address freed", 20, || {
        !held(&lab).contains(&always_addr)
    });
    // Its plugin's socket is left without anyone answering: doctor says Docker cannot
    // reach the plugin.
    let c = config(&lab, 2);
    let out = lab
        .netpath(2, &["doctor", "--config", &c, "--json", "--wait", "0.2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugin = all
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "across-hosts" && f["detail"].to_string().contains("IPAM plugin"))
        .unwrap_or_else(|| panic!("no word of the plugin: {all}"));
    assert_eq!(plugin["level"], "fail", "{plugin}");
    assert!(
        plugin["detail"].to_string().contains("does not answer"),
        "{plugin}"
    );

    // etcd away: the running containers keep talking; a new address cannot be made sure
    // of, and docker run says so.
    lab.kill_etcd(0);
    let ping = pinging(&lab, 1, "c2", &c1, 30);
    let mut new = lab.docker(0, &["run", "-d", "--name", "noetcd", "--net", "net1"]);
    new.args(["np-probe", &probe, "serve", "7000", "60"]);
    let t = Instant::now();
    let refused = new.output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(err.contains("etcd"), "{err}");
    eprintln!(
        "docker run with etcd away refused after {:?}: {err}",
        t.elapsed()
    );
    assert_eq!(answered(ping), 30, "pings lost with etcd away");
}

/// Three hosts start containers on one network at once, without `--ip` (30 each here;
/// `cargo xtask bench --only across` starts 100 each): no two addresses alike, each held
/// in etcd by the host that runs it.
#[test]
fn addresses_handed_out_at_once_on_three_hosts_never_collide() {
    let Some(lab) = fleet_docker_lab() else {
        return;
    };
    create(&lab, 0, "big", "10.244.68.0/23", "vxlan");
    seen_everywhere(&lab, "big");
    const EACH: usize = 30;
    let t = Instant::now();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let host = lab.docker_host(i);
            std::thread::spawn(move || {
                for k in 0..EACH {
                    let o = std::process::Command::new("docker")
                        .args(["-H", &host, "run", "-d", "--net", "big", "--name"])
                        .arg(format!("m{i}x{k}"))
                        .args(["np-busybox", "sleep", "3600"])
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "host {i} container {k}: {o:?}");
                }
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    eprintln!("{} containers on 3 hosts in {:?}", 3 * EACH, t.elapsed());
    let mut all = std::collections::BTreeMap::new();
    for i in 0..3 {
        let f = "{{range .Containers}}{{.IPv4Address}} {{end}}";
        let out = output(lab.docker(i, &["network", "inspect", "big", "-f", f])).unwrap();
        let addrs: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(addrs.len(), EACH, "host {i}: {out}");
        for a in addrs {
            let a = a.split('/').next().unwrap().to_owned();
            if let Some(other) = all.insert(a.clone(), i) {
                panic!("{a} given on hosts {other} and {i}");
            }
        }
    }
    let held = lab.etcdctl("get --prefix /netpath/addresses/big/").unwrap();
    for (a, i) in &all {
        let want = format!(
            "/netpath/addresses/big/{a}\n{{\"host\":\"{}\"}}",
            lab.hosts[*i].name
        );
        assert!(
            held.contains(&want),
            "{a} of host {i} not held by it in etcd"
        );
    }
    // Every host routes to the other two hosts' containers.
    let routed = |i: usize| -> u64 {
        let v = lab.netpath_json(i, &["network", "list", "--json"]);
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["network"] == "big")
            .map_or(0, |n| {
                n["across_hosts"]["remote_containers"].as_u64().unwrap_or(0)
            })
    };
    wait_for("every host routes to the others' containers", 10, || {
        (0..3).all(|i| routed(i) == 2 * EACH as u64)
    });
}

/// One HTTP POST to the unix socket `path`: the response's body.
fn post(path: &std::path::Path, what: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /{what} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}

/// Garbage in the plugin's requests and in etcd's keys of networks across hosts: a clear
/// error each, logged and skipped by the agents, nothing half-made; the CLI refuses what
/// would clash. The plugin's socket is root's alone.
#[test]
fn garbage_in_plugin_requests_and_etcd_keys_gets_a_clear_error_and_nothing_half_made() {
    use std::os::unix::fs::PermissionsExt;
    let Some(lab) = fleet_docker_lab() else {
        return;
    };
    create(&lab, 0, "net1", NET1, "direct");
    seen_everywhere(&lab, "net1");
    let sock = netpath_tests::docker::plugin_socket(&lab.hosts[0]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", sock.display());
    let held = |lab: &Lab| {
        lab.etcdctl("get --prefix --keys-only /netpath/addresses/")
            .unwrap()
    };
    let before = held(&lab);
    for (what, body, says) in [
        (
            "IpamDriver.RequestAddress",
            &b"{not json"[..],
            "not the JSON Docker sends",
        ),
        (
            "IpamDriver.RequestAddress",
            &br#"{"PoolID":"nope"}"#[..],
            "no network across hosts named \"nope\"",
        ),
        (
            "IpamDriver.RequestAddress",
            &br#"{"PoolID":"net1","Address":"10.9.9.9"}"#[..],
            "not a container address of network net1",
        ),
        (
            "IpamDriver.RequestAddress",
            &br#"{"PoolID":"net1","Address":"banana"}"#[..],
            "not an IPv4 address",
        ),
        (
            "IpamDriver.RequestPool",
            &br#"{"Pool":"10.99.0.0/24"}"#[..],
            "netpath network create",
        ),
        (
            "IpamDriver.RequestPool",
            &br#"{"Pool":"10.244.64.0/24","V6":true}"#[..],
            "IPv4 only",
        ),
        (
            "IpamDriver.ReleaseAddress",
            &br#"{"PoolID":"../x","Address":"10.244.64.9"}"#[..],
            "network name",
        ),
        ("IpamDriver.Nonsense", &b"{}"[..], "not an IPAM call"),
    ] {
        let answer = post(&sock, what, body);
        let v: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{what}: {e}: {answer}"));
        let err = v["Error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no Error: {answer}"));
        assert!(
            err.contains(says),
            "{what} {}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        post(&sock, "Plugin.Activate", b""),
        r#"{"Implements":["IpamDriver"]}"#
    );
    assert_eq!(
        held(&lab),
        before,
        "a refused request left an address behind"
    );

    // Garbage written into etcd by someone else: skipped and logged, nothing made of it.
    for (k, v) in [
        ("/netpath/networks/bad", "not json"),
        (
            "/netpath/networks/-x",
            r#"{"subnet":"10.244.70.0/24","gateway":"10.244.70.1","mode":"direct","vni":4200,"masquerade":true,"internal":false}"#,
        ),
        (
            "/netpath/networks/wide",
            r#"{"subnet":"10.0.0.0/4","gateway":"10.0.0.1","mode":"direct","vni":4201,"masquerade":true,"internal":false}"#,
        ),
        ("/netpath/addresses/net1/10.244.64.300", r#"{"host":"h2"}"#),
        ("/netpath/addresses/net1/10.244.64.9", "garbage"),
        ("/netpath/addresses/net1/10.244.65.9", r#"{"host":"h2"}"#),
    ] {
        lab.etcdctl(&format!("put -- {k} {}", v.replace(' ', "_")))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        let nets = docker_networks(&lab, i);
        assert!(
            !nets.iter().any(|n| n == "bad" || n == "wide" || n == "-x"),
            "{nets:?}"
        );
        let v = lab.netpath_json(i, &["network", "list", "--json"]);
        let net1 = v
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["network"] == "net1")
            .cloned();
        assert_eq!(
            net1.map(|n| n["across_hosts"]["remote_containers"].clone()),
            Some(serde_json::json!(0)),
            "host {i}"
        );
    }
    // The CLI: names, subnets and overlaps refused with why.
    let c = config(&lab, 0);
    for (name, subnet, says) in [
        ("x!", "10.244.70.0/24", "network name"),
        ("net9", "10.244.11.0/24", "a host's subnet"),
        ("net9", "10.244.64.128/25", "overlaps network net1"),
        ("net1", "10.244.71.0/24", "exists already"),
        ("net9", "10.244.72.0/30", "/8 to /29"),
    ] {
        let o = lab
            .netpath(
                0,
                &[
                    "network", "create", name, "--subnet", subnet, "--config", &c,
                ],
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(says),
            "{name} {subnet}: {err}"
        );
    }
}
