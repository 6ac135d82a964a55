//! Docker's own networks on real Docker hosts (Debian's dockerd 20.10 in each lab host's
//! namespace, Docker's iptables rules in place): user-defined bridge networks made with
//! `docker network create` and by Debian's docker-compose 1.29, served by netpath from
//! Docker's API with no per-network config. Each host's subnet is a /23 that holds
//! docker0's network and the pools `netpath subnet` prints for daemon.json
//! (`Lab::network_configs`).

use netpath_tests::{
    Lab, PeerMode,
    docker::{docker_lab, docker_ports, ping_from, serve_on, wait_for},
    in_ns, output, probe_bin,
};

/// `probe check tcp ADDR 7000` from container `name` of host `i`: whether it echoed.
fn tcp_from(lab: &Lab, i: usize, name: &str, to: &str) -> bool {
    let probe = probe_bin().display().to_string();
    lab.docker(i, &["exec", name, &probe, "check", "tcp", to, "7000"])
        .output()
        .unwrap()
        .status
        .success()
}

/// `netpath network list --json` of host `i`, by network name.
fn networks(lab: &Lab, i: usize) -> std::collections::BTreeMap<String, serde_json::Value> {
    lab.netpath_json(i, &["network", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["network"].as_str().unwrap().to_owned(), n.clone()))
        .collect()
}

#[test]
fn user_defined_networks_cross_hosts_and_keep_dockers_isolation() {
    let Some(mut lab) = docker_lab() else { return };
    let daemon = lab.network_configs(PeerMode::Direct, false).unwrap();
    assert_eq!(daemon[0]["bip"], "10.244.10.1/27", "{}", daemon[0]);
    assert_eq!(
        daemon[0]["default-address-pools"],
        serde_json::json!([
            {"base": "10.244.10.32/27", "size": 27},
            {"base": "10.244.10.64/26", "size": 27},
            {"base": "10.244.10.128/25", "size": 27},
            {"base": "10.244.11.0/24", "size": 27},
        ]),
        "{}",
        daemon[0]
    );
    lab.dockerds_with(&daemon, false).unwrap();
    lab.network_configs(PeerMode::Direct, true).unwrap();
    lab.start_all().unwrap();

    // Networks made while the agents run, from the pools and with --subnet, on both hosts.
    for i in 0..2 {
        output(lab.docker(i, &["network", "create", "appnet"])).unwrap();
    }
    output(lab.docker(0, &["network", "create", "other"])).unwrap();
    output(lab.docker(0, &["network", "create", "--internal", "sealed"])).unwrap();
    let fixed = ["network", "create", "--subnet", "10.244.11.224/27", "fixed"];
    output(lab.docker(0, &fixed)).unwrap();
    let far = ["network", "create", "--subnet", "10.250.0.0/24", "far"];
    output(lab.docker(0, &far)).unwrap();

    let a = serve_on(&lab, 0, "ca", "appnet", &[]);
    let b = serve_on(&lab, 0, "cb", "other", &[]);
    let both = serve_on(&lab, 0, "cboth", "appnet", &[]);
    output(lab.docker(0, &["network", "connect", "other", "cboth"])).unwrap();
    let s = serve_on(&lab, 0, "cs", "sealed", &[]);
    let f = serve_on(&lab, 0, "cf", "fixed", &["-p", "8080:7000"]);
    serve_on(&lab, 0, "cx", "far", &[]);
    let p = serve_on(&lab, 1, "cp", "appnet", &[]);
    assert!(
        a.starts_with("10.244.10.") || a.starts_with("10.244.11."),
        "{a}"
    );
    assert!(
        p.starts_with("10.244.12.") || p.starts_with("10.244.13."),
        "{p}"
    );
    assert!(
        f.starts_with("10.244.11.22") || f.starts_with("10.244.11.23"),
        "{f}"
    );

    // Found, not configured: every bridge network of the host.
    wait_for("h1's networks", 10, || networks(&lab, 0).len() == 6);
    let nets = networks(&lab, 0);
    let row = |n: &str| {
        let r = &nets[n];
        format!(
            "{} {} {} {} internal={} masquerade={} reachable={}",
            r["network"],
            r["subnet"],
            r["origin"],
            r["containers"],
            r["internal"],
            r["masquerade"],
            r["reachable_from_peers"]
        )
    };
    assert_eq!(
        row("bridge"),
        "\"bridge\" \"10.244.10.0/27\" \"config\" 0 internal=false masquerade=true reachable=true"
    );
    wait_for("the endpoints on h1's networks", 10, || {
        networks(&lab, 0)["appnet"]["containers"] == 2
    });
    let nets = networks(&lab, 0);
    assert_eq!(nets["sealed"]["internal"], true, "{nets:?}");
    assert_eq!(nets["far"]["reachable_from_peers"], false, "{nets:?}");
    assert_eq!(nets["other"]["containers"], 2, "{nets:?}");
    let eps = lab.netpath_json(0, &["dump", "endpoints", "--json"]);
    let on = |addr: &str| {
        eps.as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr)
            .map(|e| e["network"].clone())
    };
    assert_eq!(on(&a), Some(serde_json::json!("appnet")), "{eps}");
    assert_eq!(on(&s), Some(serde_json::json!("sealed")), "{eps}");

    // Across hosts, direct: both ways, from the pools and from --subnet; delivered
    // straight into the containers of a user-defined network.
    let delivered = lab.counter(0, "fwd-deliver");
    assert_eq!(ping_from(&lab, 1, "cp", &a), 3);
    assert!(lab.counter(0, "fwd-deliver") >= delivered + 3);
    assert_eq!(ping_from(&lab, 0, "ca", &p), 3);
    assert!(tcp_from(&lab, 1, "cp", &f));
    assert!(tcp_from(&lab, 0, "ca", &p));

    // Docker's isolation: two networks of one host do not meet; a container on both
    // reaches each.
    let isolated = lab.counter(0, "drop-network-isolated");
    assert_eq!(ping_from(&lab, 0, "ca", &b), 0);
    assert!(!tcp_from(&lab, 0, "cb", &a));
    assert!(lab.counter(0, "drop-network-isolated") > isolated);
    let t = lab.netpath_json(0, &["trace", "--from", &a, "--to", &b, "--json"]);
    assert_eq!(t["reason"], "drop-network-isolated", "{t}");
    assert!(
        t["steps"]
            .to_string()
            .contains("two networks, which Docker keeps apart"),
        "{t}"
    );
    let both_b = lab.docker_addr(0, "cboth", "other").unwrap();
    assert_eq!(ping_from(&lab, 0, "cboth", &a), 3);
    assert_eq!(ping_from(&lab, 0, "cboth", &b), 3);
    assert!(tcp_from(&lab, 0, "cb", &both_b));
    assert!(tcp_from(&lab, 0, "ca", &both));

    // An internal network: nothing leaves the host, nothing comes in.
    let internal = lab.counter(0, "drop-network-internal");
    assert!(!tcp_from(&lab, 0, "cs", &p));
    assert_eq!(ping_from(&lab, 1, "cp", &s), 0);
    assert!(lab.counter(0, "drop-network-internal") > internal);

    // A network outside the host's subnet: named with the fix.
    // (status exits 1: there is a problem to report)
    let st = lab.netpath(0, &["status", "--json"]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        st["problems"]
            .to_string()
            .contains("network far (10.250.0.0/24 on br-"),
        "{st}"
    );
    let o = lab
        .netpath(0, &["doctor", "--json", "--wait", "1"])
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(doctor.contains("no other host routes to it"), "{doctor}");

    // -p on a user-defined network with the nat table flushed (Docker's DNAT gone).
    for h in &lab.hosts {
        output(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
    }
    wait_for("f's port served", 10, || {
        docker_ports(&lab, 0) == [format!("tcp/8080 -> {f}")]
    });
    let probe = probe_bin().display().to_string();
    let out = lab.outside().ns.clone();
    let h1 = lab.hosts[0].underlay.clone();
    output(in_ns(&out, &format!("{probe} check tcp {h1} 8080 100000"))).unwrap();
    // ... and the containers' way out, netpath's masquerade (Docker's is flushed).
    lab.spawn_in(&out, &probe_bin(), &["serve", "7000", "120"])
        .unwrap();
    let outside = lab.outside().addr.clone();
    let masqueraded = lab.counter(0, "fwd-masquerade");
    wait_for("the outside host's server", 5, || {
        tcp_from(&lab, 0, "ca", &outside)
    });
    assert!(lab.counter(0, "fwd-masquerade") > masqueraded);

    // A network removed while the agent runs: gone from the maps, its programs detached.
    output(lab.docker(0, &["rm", "-f", "cx"])).unwrap();
    output(lab.docker(0, &["network", "rm", "far"])).unwrap();
    wait_for("far gone", 10, || !networks(&lab, 0).contains_key("far"));
    let links = std::fs::read_dir(lab.hosts[0].pin_dir.join("links"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("np_from_bridge@")
        })
        .count();
    assert_eq!(links, 4, "appnet, other, sealed, fixed");

    // VXLAN between the hosts: the same networks cross in the tunnel. A same-host policy
    // on a user-defined network: decided on the sender's veth.
    lab.network_configs(PeerMode::Vxlan, true).unwrap();
    lab.append_config(
        0,
        &format!("[[policy]]\nfrom = \"{a}/32\"\nto = \"{both}/32\"\nproto = \"tcp\"\nport = 7000\naction = \"deny\"\n"),
    )
    .unwrap();
    for i in 0..2 {
        lab.kill_agent(i);
        lab.start(i).unwrap();
    }
    let denied = lab.counter(0, "drop-policy-deny");
    assert!(!tcp_from(&lab, 0, "ca", &both));
    assert!(lab.counter(0, "drop-policy-deny") > denied);
    assert_eq!(ping_from(&lab, 0, "ca", &both), 3, "the rest is allowed");
    let vx = lab.counter(1, "fwd-vxlan-encap");
    assert_eq!(ping_from(&lab, 1, "cp", &a), 3);
    assert!(tcp_from(&lab, 1, "cp", &f));
    assert!(tcp_from(&lab, 0, "cboth", &p));
    assert!(lab.counter(1, "fwd-vxlan-encap") > vx);
    lab.teardown().unwrap();
}

#[test]
fn a_compose_project_crosses_hosts_and_its_ports_answer_through_restarts() {
    let Some(mut lab) = docker_lab() else { return };
    if !std::path::Path::new("/usr/bin/docker-compose").exists() {
        eprintln!("skipped: needs Debian's docker-compose (cargo xtask setup)");
        return;
    }
    let daemon = lab.network_configs(PeerMode::Direct, false).unwrap();
    let o = lab.dockerds_with(&daemon, true).unwrap();
    lab.network_configs(PeerMode::Direct, true).unwrap();
    lab.start_all().unwrap();
    let peer = serve_on(&lab, 1, "peer", "bridge", &[]);

    // A compose project as its users write it: a service with `ports:`, another that
    // talks to it by name, on the project's own network.
    let probe = probe_bin().display().to_string();
    let project = lab.dir.join("shop");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("docker-compose.yml"),
        format!(
            "version: \"3.8\"\nservices:\n  web:\n    image: np-probe\n    command: [\"{probe}\", \"serve\", \"7000\", \"3600\"]\n    ports:\n      - \"8090:7000\"\n  worker:\n    image: np-probe\n    command: [\"{probe}\", \"serve\", \"7000\", \"3600\"]\n"
        ),
    )
    .unwrap();
    let host = lab.docker_host(0);
    let compose = |args: &[&str]| {
        let mut cmd = std::process::Command::new("docker-compose");
        cmd.current_dir(&project)
            .env("DOCKER_HOST", &host)
            .args(["--no-ansi", "-p", "shop"])
            .args(args);
        cmd
    };
    output(&mut compose(&["up", "-d"])).unwrap();
    let web = lab.docker_addr(0, "shop_web_1", "shop_default").unwrap();
    assert!(
        web.starts_with("10.244.10.") || web.starts_with("10.244.11."),
        "{web}"
    );
    wait_for("shop_default served", 10, || {
        networks(&lab, 0)
            .get("shop_default")
            .is_some_and(|n| n["containers"] == 2)
    });
    // Compose's DNS on the project network, served by netpath's same-host path.
    assert!(tcp_from(&lab, 0, "shop_worker_1", "web"));
    // Across hosts both ways, and the port from the outside host, the nat table flushed.
    assert_eq!(ping_from(&lab, 1, "peer", &web), 3);
    assert!(tcp_from(&lab, 0, "shop_web_1", &peer));
    for h in &lab.hosts {
        output(in_ns(&h.ns, "iptables -t nat -F")).unwrap();
    }
    wait_for("web's port served", 10, || {
        docker_ports(&lab, 0) == [format!("tcp/8090 -> {web}")]
    });
    let out = lab.outside().ns.clone();
    let h1 = lab.hosts[0].underlay.clone();
    output(in_ns(&out, &format!("{probe} check tcp {h1} 8090 100000"))).unwrap();

    // Under traffic (a TCP connection to the port from the outside host, a ping from the
    // other host's container every 100 ms), dockerd restarts (live-restore keeps the
    // containers) and so does the agent: nothing is cut.
    let mut o = o;
    o.daemon = daemon[0].clone();
    lab.restart_under_traffic(8090, &web, &o);

    // Down: the project's network and port go.
    output(&mut compose(&["down"])).unwrap();
    wait_for("the project gone", 15, || {
        !networks(&lab, 0).contains_key("shop_default") && docker_ports(&lab, 0).is_empty()
    });
    lab.teardown().unwrap();
}
