//! netpath on real Docker hosts (Debian's dockerd 20.10, started by the test in each lab
//! host's namespace, Docker's own iptables rules in place): `docker run` containers across
//! hosts, and `docker run -p` ports served by netpath from Docker's API, with
//! `"userland-proxy": false` and the nat table flushed.

use std::thread;

use netpath_tests::{
    Lab, PeerMode,
    docker::{DockerOptions, docker_lab, docker_ports, ping_from, wait_for},
    in_ns, output, probe_bin,
};

#[test]
fn docker_containers_cross_hosts_and_their_published_ports_answer_with_the_nat_table_flushed() {
    let Some(mut lab) = docker_lab() else { return };
    let o = DockerOptions::default();
    lab.dockerd(0, &o).unwrap();
    lab.dockerd(1, &o).unwrap();
    let probe = probe_bin().display().to_string();
    let web = lab
        .docker_serve(0, "web", &["8080:7000", "8081:7000/udp"])
        .unwrap();
    let peer = lab.docker_serve(1, "peer", &[]).unwrap();
    assert!(web.starts_with("10.244.11."), "{web}");
    assert!(peer.starts_with("10.244.12."), "{peer}");

    for mode in [PeerMode::Direct, PeerMode::Vxlan] {
        // netpath's masquerade in place of Docker's MASQUERADE (flushed below).
        lab.write_docker_configs(mode).unwrap();
        for i in 0..2 {
            lab.kill_agent(i);
            lab.start(i).unwrap();
        }
        // The ports Docker publishes are netpath's, origin docker.
        wait_for("web's ports served", 10, || {
            docker_ports(&lab, 0) == [format!("tcp/8080 -> {web}"), format!("udp/8081 -> {web}")]
        });
        assert_eq!(ping_from(&lab, 1, "peer", &web), 3, "{mode:?}");
        let echoed = lab
            .docker(
                1,
                &[
                    "exec", "peer", &probe, "check", "tcp", &web, "7000", "100000",
                ],
            )
            .output()
            .unwrap();
        assert!(echoed.status.success(), "{mode:?}: {echoed:?}");
    }
    let vx = lab.counter(1, "fwd-vxlan-encap");
    assert!(vx > 0);

    // The outage of seed 002 for published ports: the nat table flushed (Docker's DNAT
    // and MASQUERADE gone), userland-proxy off. The ports answer from the outside host and
    // from the other host's container, served in BPF.
    for h in &lab.hosts {
        output(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
    }
    let out = lab.outside().ns.clone();
    let h1 = lab.hosts[0].underlay.clone();
    output(in_ns(&out, &format!("{probe} check tcp {h1} 8080 100000"))).unwrap();
    output(in_ns(&out, &format!("{probe} check udp {h1} 8081"))).unwrap();
    let from_peer = lab
        .docker(1, &["exec", "peer", &probe, "check", "tcp", &h1, "8080"])
        .output()
        .unwrap();
    assert!(from_peer.status.success(), "{from_peer:?}");
    assert!(lab.counter(0, "fwd-published") > 0);

    // Docker 28's raw-table rules for direct access to container addresses (not in
    // Debian's 20.10: written here as moby v28 writes them, one per container): netpath
    // delivers into the container without the host's stack, so its packets never meet
    // them; peers and published ports work on, and the rules count nothing.
    for (i, addr) in [(0, &web), (1, &peer)] {
        output(in_ns(
            &lab.hosts[i].ns,
            &format!("iptables -t raw -A PREROUTING -d {addr}/32 ! -i docker0 -j DROP"),
        ))
        .unwrap();
    }
    assert_eq!(
        ping_from(&lab, 1, "peer", &web),
        3,
        "with Docker 28's raw rules"
    );
    output(in_ns(&out, &format!("{probe} check tcp {h1} 8080 100000"))).unwrap();
    for h in &lab.hosts {
        let rules = output(in_ns(&h.ns, "iptables -t raw -L PREROUTING -v -x -n")).unwrap();
        let drop = rules
            .lines()
            .find(|l| l.contains("DROP"))
            .unwrap_or_else(|| panic!("{rules}"));
        assert_eq!(
            drop.split_whitespace().next(),
            Some("0"),
            "{}: {rules}",
            h.name
        );
    }
    let st = lab.netpath_json(0, &["status", "--json"]);
    assert_eq!(st["docker"]["up"], true, "{st}");
    assert_eq!(st["docker"]["containers"], 1, "{st}");
    assert_eq!(st["docker"]["ports"], 2, "{st}");
    let o = lab
        .netpath(0, &["doctor", "--json", "--wait", "1"])
        .output()
        .unwrap();
    let doctor: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let docker: Vec<String> = doctor
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "docker")
        .map(|f| format!("{} {}", f["level"], f["detail"]))
        .collect();
    let all = docker.join("\n");
    assert!(
        all.contains("\"ok\" \"engine answering; 1 running containers, 2 published"),
        "{all}"
    );
    assert!(
        all.contains("docker0's subnet is netpath's (10.244.11.0/24)"),
        "{all}"
    );
    assert!(
        all.contains("2 raw PREROUTING drops") || all.contains("1 raw PREROUTING drops"),
        "{all}"
    );

    // A port that the config publishes too stays the config's: refused for the container
    // (logged, in status); the container's other ports are served.
    lab.kill_agent(0);
    lab.append_config(
        0,
        "[[publish]]\nproto = \"udp\"\nhost_port = 8081\ncontainer = \"10.244.11.200\"\nport = 9\n",
    )
    .unwrap();
    lab.start(0).unwrap();
    wait_for("the clash refused", 10, || {
        docker_ports(&lab, 0) == [format!("tcp/8080 -> {web}")]
    });
    let status = |lab: &Lab| {
        serde_json::from_slice::<serde_json::Value>(
            &lab.netpath(0, &["status", "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    wait_for("the engine listed again", 10, || {
        status(&lab)["docker"]["up"] == true
    });
    let st = status(&lab);
    assert_eq!(st["docker"]["refused"], 1, "{st}");
    assert!(
        st["problems"]
            .to_string()
            .contains("container web (udp/8081"),
        "{st}"
    );
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains("docker: refused container web (udp/8081"),
        "{log}"
    );

    // A stopped container's ports go.
    output(lab.docker(0, &["stop", "-t", "0", "web"])).unwrap();
    wait_for("web's ports gone", 10, || docker_ports(&lab, 0).is_empty());
    let gone = in_ns(&out, &format!("{probe} check tcp {h1} 8080"))
        .output()
        .unwrap();
    assert!(!gone.status.success(), "{gone:?}");
    lab.teardown().unwrap();
}

/// A unix socket at `path` that answers every request with `reply` (a Docker API that
/// answers garbage); the thread ends with the test process.
fn garbage_engine(path: &std::path::Path, reply: &'static str) {
    use std::io::{Read, Write};
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply.as_bytes());
        }
    });
}

#[test]
fn a_docker_api_that_is_down_or_answers_garbage_is_reported_and_changes_nothing() {
    let Some(mut lab) = Lab::hosts(1, 1) else {
        return;
    };
    let c = lab.hosts[0].containers[0].ip.clone();
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.append_config(
        0,
        &format!(
            "[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"{c}\"\nport = 7000\n"
        ),
    )
    .unwrap();
    let good = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    let problems = |lab: &Lab| {
        let o = lab.netpath(0, &["status", "--json"]).output().unwrap();
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (st["docker"].clone(), st["problems"].to_string())
    };
    let ports = |lab: &Lab| {
        lab.netpath_json(0, &["publish", "list", "--json"])
            .to_string()
    };
    // No engine at the socket: the agent starts, says why, and keeps trying; the config's
    // port is served.
    let missing = lab.dir.join("missing.sock");
    let with_engine = |lab: &mut Lab, socket: &std::path::Path| {
        lab.kill_agent(0);
        let docker = format!("\n[docker]\nsocket = {:?}\n", socket.display().to_string());
        std::fs::write(&lab.hosts[0].config, format!("{good}{docker}")).unwrap();
        lab.start(0).unwrap();
        wait_for("the engine reported away", 10, || {
            problems(lab)
                .1
                .contains("the Docker engine has not answered")
        });
    };
    with_engine(&mut lab, &missing);
    let (d, _) = problems(&lab);
    assert_eq!(d["up"], false, "{d}");
    assert!(d["note"].as_str().unwrap().contains("missing.sock"), "{d}");
    assert!(ports(&lab).contains("8080"));
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains("docker: ") && log.contains("its ports stay as they are"),
        "{log}"
    );

    // An engine that answers garbage: the same, no panic, the datapath as it was.
    let sock = lab.dir.join("garbage.sock");
    garbage_engine(
        &sock,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"not\":[]",
    );
    with_engine(&mut lab, &sock);
    assert!(ports(&lab).contains("8080"));
    let o = lab
        .netpath(0, &["doctor", "--json", "--wait", "1"])
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        doctor.contains("the Docker engine has not answered"),
        "{doctor}"
    );
    let (sent, got, _) = netpath_tests::ping(
        &lab.hosts[0].containers[0].ns,
        &lab.hosts[0].gateway,
        2,
        "0.2",
    )
    .unwrap();
    assert_eq!((sent, got), (2, 2));
    let st = lab.netpath(0, &["status", "--json"]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["agent"]["running"], true, "the agent runs on: {st}");
    lab.teardown().unwrap();
}

#[test]
fn a_dockerd_restart_and_an_agent_restart_cut_nothing_and_leave_nothing_stale() {
    let Some(mut lab) = docker_lab() else { return };
    let o = DockerOptions {
        live_restore: true,
        ..DockerOptions::default()
    };
    lab.dockerd(0, &o).unwrap();
    lab.dockerd(1, &o).unwrap();
    let web = lab.docker_serve(0, "web", &["8080:7000"]).unwrap();
    lab.docker_serve(1, "peer", &[]).unwrap();
    lab.write_docker_configs(PeerMode::Direct).unwrap();
    lab.start_all().unwrap();
    wait_for("web's port served", 10, || {
        docker_ports(&lab, 0) == [format!("tcp/8080 -> {web}")]
    });
    for h in &lab.hosts {
        output(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
    }
    // Under traffic, a dockerd restart and an agent restart cut nothing.
    lab.restart_under_traffic(8080, &web, &o);

    // Nothing stale: exactly the running container's port, and it goes with it.
    wait_for("the engine listed again", 15, || {
        lab.netpath_json(0, &["status", "--json"])["docker"]["up"] == true
    });
    assert_eq!(docker_ports(&lab, 0), [format!("tcp/8080 -> {web}")]);
    // A container removed while the agent is down: its port goes with the next listing.
    let extra = lab.docker_serve(0, "extra", &["8090:7000"]).unwrap();
    wait_for("extra's port served", 10, || {
        docker_ports(&lab, 0).len() == 2
    });
    lab.kill_agent(0);
    output(lab.docker(0, &["rm", "-f", "extra"])).unwrap();
    lab.start(0).unwrap();
    wait_for("extra's port gone", 10, || {
        docker_ports(&lab, 0) == [format!("tcp/8080 -> {web}")]
    });
    assert!(!lab.endpoints(0).contains_key(&extra));
    output(lab.docker(0, &["rm", "-f", "web"])).unwrap();
    wait_for("web's port gone", 10, || docker_ports(&lab, 0).is_empty());
    lab.teardown().unwrap();
}

#[test]
fn docker_with_iptables_off_and_same_host_policy_with_bridge_nf_call_iptables_on() {
    let Some(mut lab) = docker_lab() else { return };
    lab.dockerd(0, &DockerOptions::default()).unwrap();
    lab.dockerd(
        1,
        &DockerOptions {
            iptables: false,
            ..DockerOptions::default()
        },
    )
    .unwrap();
    let probe = probe_bin().display().to_string();
    let a = lab.docker_serve(0, "ca", &[]).unwrap();
    let b = lab.docker_serve(0, "cb", &[]).unwrap();
    let c = lab.docker_serve(1, "cc", &["9090:7000"]).unwrap();
    // A container that never sends: the bridge has not learned it, Docker knows it.
    let quiet = lab
        .docker_run(1, "cq", &["np-probe", "sleep", "3600"])
        .unwrap();
    let veth: u64 = output(lab.docker(
        1,
        &["exec", "cq", "busybox", "cat", "/sys/class/net/eth0/iflink"],
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    lab.write_docker_configs(PeerMode::Vxlan).unwrap();
    lab.append_config(
        0,
        &format!("[[policy]]\nfrom = \"{a}/32\"\nto = \"{b}/32\"\nproto = \"tcp\"\nport = 7000\naction = \"deny\"\n"),
    )
    .unwrap();
    // Docker's bridge-netfilter left on: bridged frames would meet iptables.
    netpath_tests::sysctl(&lab.hosts[0].ns, "net.bridge.bridge-nf-call-iptables", "1").unwrap();
    lab.start_all().unwrap();
    wait_for("c's port served", 10, || {
        docker_ports(&lab, 1) == [format!("tcp/9090 -> {c}")]
    });

    // Docker's endpoints: address, MAC and veth from the engine, before any frame.
    wait_for("the quiet container's endpoint", 10, || {
        lab.endpoints(1).get(&quiet) == Some(&veth)
    });
    output(lab.docker(1, &["rm", "-f", "cq"])).unwrap();
    wait_for("its endpoint gone", 10, || {
        !lab.endpoints(1).contains_key(&quiet)
    });

    // Same host: the rule decides on the sender's veth, before the bridge.
    let denied = lab.counter(0, "drop-policy-deny");
    let blocked = lab
        .docker(0, &["exec", "ca", &probe, "check", "tcp", &b, "7000"])
        .output()
        .unwrap();
    assert!(!blocked.status.success(), "{blocked:?}");
    assert!(lab.counter(0, "drop-policy-deny") > denied);
    assert_eq!(ping_from(&lab, 0, "ca", &b), 3, "the rest is allowed");
    let back = lab
        .docker(0, &["exec", "cb", &probe, "check", "tcp", &a, "7000"])
        .output()
        .unwrap();
    assert!(back.status.success(), "{back:?}");

    // A host whose Docker writes no iptables rules at all: peers and its published port.
    assert_eq!(ping_from(&lab, 0, "ca", &c), 3);
    let out = lab.outside().ns.clone();
    let h2 = lab.hosts[1].underlay.clone();
    output(in_ns(&out, &format!("{probe} check tcp {h2} 9090 100000"))).unwrap();
    let rules = output(in_ns(&lab.hosts[1].ns, "iptables-save")).unwrap();
    assert!(!rules.contains("DOCKER"), "{rules}");
    lab.teardown().unwrap();
}

/// Packets host `i` counted with a pass verdict (left to the stack), over every reason.
fn passed(lab: &Lab, i: usize) -> u64 {
    lab.netpath_json(i, &["dump", "counters", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"].as_str().is_some_and(|n| n.starts_with("pass-")))
        .filter_map(|r| r["packets"].as_u64())
        .sum()
}

#[test]
fn docker_macvlan_containers_beside_netpath_keep_their_way_across_hosts() {
    let Some(mut lab) = docker_lab() else { return };
    let o = DockerOptions::default();
    lab.dockerd(0, &o).unwrap();
    lab.dockerd(1, &o).unwrap();
    let probe = probe_bin().display().to_string();
    // The macvlan seed's way across hosts: a macvlan network of the uplink netpath is
    // attached to, its containers on the underlay's range.
    let macvlan = |lab: &Lab, i: usize, name: &str, addr: &str| {
        output(lab.docker(
            i,
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet",
                "198.18.0.0/24",
                "--ip-range",
                "198.18.0.96/28",
                "-o",
                "parent=eth0",
                "mv",
            ],
        ))
        .unwrap();
        output(lab.docker(
            i,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "mv",
                "--ip",
                addr,
                "np-probe",
                &probe,
                "serve",
                "7000",
                "3600",
            ],
        ))
        .unwrap();
    };
    macvlan(&lab, 0, "m1", "198.18.0.101");
    macvlan(&lab, 1, "m2", "198.18.0.102");
    lab.docker_serve(0, "c1", &[]).unwrap();
    lab.write_docker_configs(PeerMode::Vxlan).unwrap();
    lab.start_all().unwrap();

    // Macvlan to macvlan across the hosts, and to the other host's underlay address: the
    // uplink's program leaves it to the stack (counted as passed).
    let before = passed(&lab, 1);
    assert_eq!(ping_from(&lab, 0, "m1", "198.18.0.102"), 3);
    assert_eq!(ping_from(&lab, 0, "m1", &lab.hosts[1].underlay.clone()), 3);
    let echoed = lab
        .docker(
            0,
            &[
                "exec",
                "m1",
                &probe,
                "check",
                "tcp",
                "198.18.0.102",
                "7000",
                "100000",
            ],
        )
        .output()
        .unwrap();
    assert!(echoed.status.success(), "{echoed:?}");
    assert!(
        passed(&lab, 1) >= before + 6,
        "h2 counted the macvlan traffic as passed"
    );
    // netpath's containers reach the other host's macvlan containers (masqueraded).
    let to_m2 = lab
        .docker(
            0,
            &["exec", "c1", &probe, "check", "tcp", "198.18.0.102", "7000"],
        )
        .output()
        .unwrap();
    assert!(to_m2.status.success(), "{to_m2:?}");
    assert!(lab.counter(0, "fwd-masquerade") > 0);
    lab.teardown().unwrap();
}
