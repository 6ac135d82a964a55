//! The fleet on a real etcd (Debian's etcd-server, started by the test in a namespace of
//! the lab): hosts register their subnets and find each other as peers.

use std::{
    thread,
    time::{Duration, Instant},
};

use netpath_tests::{Lab, ping, wait_for};

fn lab(hosts: usize) -> Option<Lab> {
    Lab::hosts(hosts, 1)
}

/// Host `i`'s peers from etcd, by name.
fn etcd_peers(lab: &Lab, i: usize) -> Vec<String> {
    let mut v: Vec<String> = lab
        .netpath_json(i, &["peer", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["origin"] == "etcd")
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Waits up to `secs` for host `i`'s etcd peers to be `want`.
fn wait_peers(lab: &Lab, i: usize, want: &[&str], secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = etcd_peers(lab, i);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "host {i}: etcd peers {got:?}, want {want:?}; its log:\n{}",
            std::fs::read_to_string(&lab.hosts[i].log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A command's JSON, whatever its exit status (status and doctor exit 1 on findings).
fn json_of(lab: &Lab, i: usize, args: &[&str]) -> serde_json::Value {
    let o = lab.netpath(i, args).output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {o:?}"))
}

/// `netpath cluster init` (10.244.0.0/16, direct) with host 0's config; its arguments.
fn init_cluster(lab: &Lab) -> Vec<String> {
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let init: Vec<String> = [
        "cluster",
        "init",
        "--config",
        &config,
        "--cidr",
        "10.244.0.0/16",
        "--mode",
        "direct",
    ]
    .map(String::from)
    .to_vec();
    let args: Vec<&str> = init.iter().map(String::as_str).collect();
    let o = lab.netpath(0, &args).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    init
}

fn crosses(lab: &Lab, a: usize, b: usize) {
    let from = &lab.hosts[a].containers[0].ns;
    let to = &lab.hosts[b].containers[0].ip;
    let (sent, got, _) = ping(from, to, 3, "0.1").unwrap();
    if got != sent {
        let again = ping(from, to, 5, "0.2").unwrap();
        panic!(
            "h{} -> h{}: {got} of {sent} answered (5 more: {} answered)\n{}",
            a + 1,
            b + 1,
            again.1,
            lab.diagnose(&[a, b])
        );
    }
}

#[test]
fn hosts_find_each_other_in_etcd_and_keep_forwarding_when_it_is_away() {
    let Some(mut lab) = lab(3) else { return };
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let init = init_cluster(&lab);
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let again = lab.netpath(0, &init).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("/netpath/config exists already"),
        "{again:?}"
    );
    lab.start_all().unwrap();
    // Every host has the two others as peers, in the cluster's mode, and traffic crosses.
    wait_peers(&lab, 0, &["h2", "h3"], 10);
    wait_peers(&lab, 1, &["h1", "h3"], 10);
    wait_peers(&lab, 2, &["h1", "h2"], 10);
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        crosses(&lab, a, b);
    }
    assert!(lab.counter(0, "fwd-direct") > 0);
    let hosts = lab.netpath_json(0, &["cluster", "hosts", "--config", &config, "--json"]);
    assert_eq!(hosts["cluster"]["mode"], "direct", "{hosts}");
    let rows = hosts["hosts"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{hosts}");
    for r in rows {
        assert!(r["lease_left_s"].as_i64().unwrap() > 0, "{r}");
        assert_eq!(r["mode"], "direct", "{r}");
        if r["host"] != "h1" {
            assert_eq!(r["peer_here"], true, "{r}");
        }
    }

    // A host that claims a subnet another host holds is refused, naming it, before
    // anything changes.
    lab.kill_agent(2);
    let good = std::fs::read_to_string(&lab.hosts[2].config).unwrap();
    std::fs::write(
        &lab.hosts[2].config,
        good.replace("10.244.13.0/24", "10.244.11.0/24"),
    )
    .unwrap();
    let err = lab.start(2).unwrap_err();
    assert!(
        format!("{err:#}").contains("subnet 10.244.11.0/24 is registered in etcd by h1"),
        "{err:#}"
    );
    std::fs::write(&lab.hosts[2].config, good).unwrap();

    // h3's agent stopped: its lease (5 s) expires and the others drop it; back, it is
    // added again.
    wait_peers(&lab, 0, &["h2"], 15);
    wait_peers(&lab, 1, &["h1"], 5);
    crosses(&lab, 0, 1);
    lab.start(2).unwrap();
    wait_peers(&lab, 0, &["h2", "h3"], 10);
    wait_peers(&lab, 1, &["h1", "h3"], 10);
    crosses(&lab, 0, 2);

    // A registration deleted by hand comes back at once, and within [etcd].peer_grace
    // (5 s): the other hosts never remove its peer (no blip).
    let key = "/netpath/subnets/10.244.12.0-24";
    let logged = |i: usize| std::fs::read_to_string(&lab.hosts[i].log).unwrap_or_default();
    let before = logged(0).len();
    lab.etcdctl(&format!("del {key}")).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !lab
        .etcdctl(&format!("get {key}"))
        .unwrap()
        .contains("\"host\":\"h2\"")
    {
        assert!(Instant::now() < until, "{key} not registered again");
        thread::sleep(Duration::from_millis(100));
    }
    wait_peers(&lab, 0, &["h2", "h3"], 5);
    thread::sleep(Duration::from_secs(6));
    let after = logged(0);
    assert!(
        !after[before..].contains("removed [\"h2\"]"),
        "h1 removed h2 for a registration put back within the grace:\n{}",
        &after[before..]
    );
    let st = lab.netpath_json(1, &["status", "--json"]);
    assert_eq!(st["etcd"]["registered"], true, "{st}");
    assert_eq!(st["etcd"]["hosts"], 2, "{st}");
    assert!(st["etcd"]["away_s"].is_null(), "{st}");

    // etcd away: nothing changes in the datapath, also across an agent's restart; status,
    // doctor and the metrics say since when.
    lab.kill_etcd(0);
    thread::sleep(Duration::from_secs(3));
    crosses(&lab, 0, 1);
    let st = json_of(&lab, 1, &["status", "--json"]);
    assert!(st["etcd"]["away_s"].as_u64().is_some(), "{st}");
    assert!(
        st["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("etcd has not answered")),
        "{st}"
    );
    let doctor = json_of(&lab, 1, &["doctor", "--json", "--wait", "1"]);
    let finding = doctor
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "etcd")
        .unwrap_or_else(|| panic!("{doctor}"));
    assert_eq!(finding["level"], "warn", "{finding}");
    lab.kill_agent(0);
    lab.start(0).unwrap();
    assert_eq!(etcd_peers(&lab, 0), ["h2", "h3"]);
    crosses(&lab, 0, 2);
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("does not answer yet"), "{log}");
    lab.teardown().unwrap();
}

#[test]
fn a_bad_etcd_section_is_refused_naming_the_field() {
    let Some(mut lab) = lab(1) else { return };
    let base = std::fs::read_to_string(&lab.hosts[0].config).unwrap_or_default();
    lab.write_fleet_configs(&["http://198.18.0.2:2379".to_owned()], 5)
        .unwrap();
    let good = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    drop(base);
    for (change, want) in [
        (
            ("endpoints = [\"http://198.18.0.2:2379\"]", "endpoints = []"),
            "[etcd].endpoints is empty",
        ),
        (
            (
                "endpoints = [\"http://198.18.0.2:2379\"]",
                "endpoints = [\"198.18.0.2\"]",
            ),
            "is not http://ADDRESS:PORT",
        ),
        (("lease_ttl = 5", "lease_ttl = 1"), "[etcd].lease_ttl = 1"),
        (
            ("lease_ttl = 5", "lease_ttl = 5\nprefix = \"netpath/\""),
            "[etcd].prefix",
        ),
        (
            (
                "lease_ttl = 5",
                "lease_ttl = 5\nca = \"/nonexistent/ca.pem\"",
            ),
            "[etcd].ca = \"/nonexistent/ca.pem\": no such file",
        ),
        (
            ("lease_ttl = 5", "lease_ttl = 5\nttl = 5"),
            "unknown field `ttl`",
        ),
    ] {
        std::fs::write(&lab.hosts[0].config, good.replace(change.0, change.1)).unwrap();
        let o = lab
            .netpath(
                0,
                &["check", "--config", lab.hosts[0].config.to_str().unwrap()],
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{change:?} accepted");
        assert!(err.contains(want), "{change:?}: {err}");
    }
    assert!(!lab.hosts[0].pin_dir.exists(), "nothing was set up");
    // What Docker's daemon.json gets for this host (the fleet leaves room for VXLAN).
    std::fs::write(&lab.hosts[0].config, &good).unwrap();
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let s = lab.netpath_json(0, &["subnet", "--config", &config, "--json"]);
    assert_eq!(s["subnet"], "10.244.11.0/24", "{s}");
    assert_eq!(s["daemon_json"]["bip"], "10.244.11.1/24", "{s}");
    assert_eq!(s["daemon_json"]["mtu"], 1450, "{s}");
    lab.teardown().unwrap();
}

#[test]
fn three_members_one_killed_and_a_partitioned_host_converge() {
    let Some(mut lab) = lab(3) else { return };
    let endpoints = lab.etcd(3).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    lab.start_all().unwrap();
    wait_peers(&lab, 0, &["h2", "h3"], 10);
    // One member down: the other two keep quorum and the fleet keeps converging (h3
    // leaves, comes back).
    lab.kill_etcd(0);
    lab.kill_agent(2);
    wait_peers(&lab, 0, &["h2"], 20);
    wait_peers(&lab, 1, &["h1"], 10);
    lab.start(2).unwrap();
    wait_peers(&lab, 0, &["h2", "h3"], 15);
    wait_peers(&lab, 2, &["h1", "h2"], 10);

    // h1 cut off from every member (its own traffic to them dropped; containers' traffic
    // is netpath's and untouched): it keeps the peers it had and forwards to them; the
    // others drop it when its lease expires, and all converge once the partition heals.
    let h1 = lab.hosts[0].ns.clone();
    let cut = |op: &str| {
        for k in 0..3 {
            let rule = format!("iptables -{op} OUTPUT -d 198.18.0.{} -j DROP", 2 + k);
            netpath_tests::run(netpath_tests::in_ns(&h1, &rule)).unwrap();
        }
    };
    cut("A");
    wait_peers(&lab, 1, &["h3"], 20);
    wait_peers(&lab, 2, &["h2"], 10);
    assert_eq!(
        etcd_peers(&lab, 0),
        ["h2", "h3"],
        "h1 keeps its peers while cut off"
    );
    // h1 still forwards to them (the others, having seen its lease expire, no longer
    // take its traffic: a lease longer than the partition keeps it whole); the rest of
    // the fleet is untouched.
    let sent = lab.counter(0, "fwd-vxlan-encap");
    let _ = ping(
        &lab.hosts[0].containers[0].ns,
        &lab.hosts[1].containers[0].ip,
        2,
        "0.1",
    );
    assert!(lab.counter(0, "fwd-vxlan-encap") >= sent + 2);
    crosses(&lab, 1, 2);
    cut("D");
    wait_peers(&lab, 1, &["h1", "h3"], 40);
    wait_peers(&lab, 2, &["h1", "h2"], 10);
    wait_peers(&lab, 0, &["h2", "h3"], 10);
    for (a, b) in [(1, 0), (2, 0)] {
        crosses(&lab, a, b);
    }
    lab.teardown().unwrap();
}

#[test]
fn tls_with_the_right_ca_works_and_a_wrong_one_is_refused_clearly() {
    let Some(mut lab) = lab(2) else { return };
    let endpoints = lab.etcd_with(1, true).unwrap();
    let certs = lab.dir.clone();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    let tls = |ca: &str| {
        format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            certs.join(ca),
            certs.join("client.pem"),
            certs.join("client-key.pem")
        )
    };
    for i in 0..2 {
        lab.append_config(i, &tls("ca.pem")).unwrap();
    }
    lab.start_all().unwrap();
    wait_peers(&lab, 0, &["h2"], 10);
    wait_peers(&lab, 1, &["h1"], 10);
    crosses(&lab, 0, 1);

    // A CA that did not sign the members' certificates: refused, and said so.
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("ca.pem", "other-ca.pem")).unwrap();
    let o = lab
        .netpath(0, &["cluster", "hosts", "--config", &config])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("no etcd member answers"), "{err}");
    assert!(
        err.contains("https://198.18.0.2:2379: its certificate is not signed by [etcd].ca"),
        "the error names the certificate problem: {err}"
    );
    lab.teardown().unwrap();
}

/// `netpath subnet --json` of host `i`: its subnet.
fn subnet_of(lab: &Lab, i: usize) -> String {
    let config = lab.hosts[i].config.to_str().unwrap().to_owned();
    lab.netpath_json(i, &["subnet", "--config", &config, "--json"])["subnet"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_wide_lease_holds_docker0s_network_and_the_pools_of_dockers_others() {
    let Some(mut lab) = Lab::hosts(2, 0) else {
        return;
    };
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    for i in 0..2 {
        lab.lease_subnet(i).unwrap();
    }
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let o = lab
        .netpath(0, &["cluster", "init", "--config", &config])
        .args([
            "--cidr",
            "10.244.0.0/16",
            "--subnet-len",
            "20",
            "--mode",
            "direct",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    lab.start_all().unwrap();
    let leased = [subnet_of(&lab, 0), subnet_of(&lab, 1)];
    let s = lab.netpath_json(0, &["subnet", "--config", &config, "--json"]);
    let net: std::net::Ipv4Addr = leased[0].strip_suffix("/20").unwrap().parse().unwrap();
    let at = |plus: u32| std::net::Ipv4Addr::from(u32::from(net) + plus);
    assert_eq!(s["daemon_json"]["bip"], format!("{}/24", at(1)), "{s}");
    assert_eq!(
        s["daemon_json"]["default-address-pools"],
        serde_json::json!([
            {"base": format!("{}/24", at(256)), "size": 24},
            {"base": format!("{}/23", at(512)), "size": 24},
            {"base": format!("{}/22", at(1024)), "size": 24},
            {"base": format!("{}/21", at(2048)), "size": 24},
        ]),
        "{s}"
    );
    // docker0 takes the bip: its network is the lease's first /24, peers route the /20.
    for (i, s) in leased.iter().enumerate() {
        lab.move_subnet(i, s).unwrap();
        lab.add_container(i).unwrap();
    }
    // The bridge's network follows its address.
    wait_for(
        5,
        || lab.netpath_json(0, &["network", "list", "--json"])[0]["subnet"] == format!("{net}/24"),
        || {
            lab.netpath_json(0, &["network", "list", "--json"])
                .to_string()
        },
    );
    crosses(&lab, 0, 1);
    crosses(&lab, 1, 0);
    let peers = lab.netpath_json(1, &["peer", "list", "--json"]).to_string();
    assert!(peers.contains(&leased[0]), "{peers}");
    lab.teardown().unwrap();
}

#[test]
fn a_host_without_a_subnet_leases_one_from_the_range_and_keeps_it() {
    let Some(mut lab) = Lab::hosts(3, 0) else {
        return;
    };
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    let remembered = [lab.lease_subnet(0).unwrap(), lab.lease_subnet(1).unwrap()];
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();

    // No range to lease from yet: refused, saying what to do; nothing is left behind.
    let err = lab.start(0).unwrap_err();
    assert!(
        format!("{err:#}").contains("/netpath/config holds no cluster range"),
        "{err:#}"
    );
    assert!(!lab.hosts[0].pin_dir.exists());
    assert!(!remembered[0].exists());
    let o = lab
        .netpath(0, &["cluster", "init", "--config", &config])
        .args(["--cidr", "10.244.0.0/16", "--mode", "vxlan"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");

    // h3 keeps the subnet its file gives; h1 and h2 lease others from the range.
    lab.start(2).unwrap();
    lab.start(0).unwrap();
    lab.start(1).unwrap();
    let leased = [subnet_of(&lab, 0), subnet_of(&lab, 1)];
    assert_ne!(leased[0], leased[1]);
    for s in &leased {
        assert!(s.starts_with("10.244.") && s.ends_with(".0/24"), "{s}");
        assert_ne!(s, "10.244.13.0/24");
    }
    for (i, s) in leased.iter().enumerate() {
        let file = std::fs::read_to_string(&remembered[i]).unwrap();
        assert!(file.contains(&format!("NETPATH_SUBNET={s}\n")), "{file}");
    }
    wait_peers(&lab, 0, &["h2", "h3"], 10);
    wait_peers(&lab, 1, &["h1", "h3"], 10);
    wait_peers(&lab, 2, &["h1", "h2"], 10);
    let st = lab.netpath_json(0, &["cluster", "status", "--config", &config, "--json"]);
    assert_eq!(st["members"][0]["answers"], true, "{st}");
    assert_eq!(st["registered"], 3, "{st}");
    assert_eq!(st["subnets_total"], 256, "{st}");
    assert_eq!(st["this_host"]["subnet"], leased[0].as_str(), "{st}");
    assert_eq!(st["this_host"]["leased"], true, "{st}");
    assert_eq!(st["peers_here"], serde_json::json!(["h2", "h3"]), "{st}");

    // Docker's bip moves the bridge into the leased subnet after the agent started: the
    // agent takes the bridge's new address as the containers' gateway, and containers in
    // the leased subnets reach each other across hosts.
    for (i, s) in leased.iter().enumerate() {
        lab.move_subnet(i, s).unwrap();
    }
    for i in 0..3 {
        lab.add_container(i).unwrap();
    }
    for i in 0..2 {
        let want = lab.hosts[i].gateway.clone();
        let until = Instant::now() + Duration::from_secs(5);
        while lab.netpath_json(i, &["dump", "config", "--json"])["gateway"] != want.as_str() {
            assert!(Instant::now() < until, "h{}: gateway not {want}", i + 1);
            thread::sleep(Duration::from_millis(100));
        }
    }
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        crosses(&lab, a, b);
    }
    assert!(lab.counter(0, "fwd-vxlan-encap") > 0);

    // Restarted, a host keeps its subnet: from its file, or, with the file gone, from its
    // registration (its lease still runs).
    lab.kill_agent(0);
    lab.start(0).unwrap();
    assert_eq!(subnet_of(&lab, 0), leased[0]);
    lab.kill_agent(0);
    std::fs::remove_file(&remembered[0]).unwrap();
    lab.start(0).unwrap();
    assert_eq!(subnet_of(&lab, 0), leased[0]);
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("this host holds"), "{log}");
    crosses(&lab, 0, 1);
    lab.teardown().unwrap();
}

#[test]
fn a_full_disk_for_the_subnet_file_refuses_the_start_and_gives_the_lease_back() {
    let Some(mut lab) = Lab::hosts(1, 0) else {
        return;
    };
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 30).unwrap();
    let remembered = lab.lease_subnet(0).unwrap();
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let o = lab
        .netpath(0, &["cluster", "init", "--config", &config])
        .args(["--cidr", "10.244.0.0/16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // The subnet file on a tmpfs that is full.
    let full = lab.dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(mount.success());
    let filler = std::fs::write(full.join("filler"), vec![0u8; 256 * 1024]);
    assert!(filler.is_err(), "the tmpfs is not full");
    let file = full.join("subnet.env");
    let text = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    std::fs::write(
        &lab.hosts[0].config,
        text.replace(
            &remembered.display().to_string(),
            &file.display().to_string(),
        ),
    )
    .unwrap();

    // Refused, saying why; nothing attached, nothing half-written, and the registration
    // given back at once (its lease is 30 s: not by expiry).
    let err = lab.start(0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("could not remember it") && msg.contains("No space left on device"),
        "{msg}"
    );
    assert!(!lab.hosts[0].pin_dir.exists());
    assert!(!file.exists() && !file.with_extension("tmp").exists());
    let regs = lab.etcdctl("get --prefix /netpath/subnets/").unwrap();
    assert!(regs.trim().is_empty(), "{regs}");

    // Room again: it starts and leases.
    std::fs::remove_file(full.join("filler")).unwrap();
    lab.start(0).unwrap();
    let file_text = std::fs::read_to_string(&file).unwrap();
    assert!(file_text.contains("NETPATH_SUBNET=10.244."), "{file_text}");
    lab.teardown().unwrap();
}

#[test]
fn garbage_registrations_in_etcd_are_skipped_and_logged_and_change_nothing() {
    let Some(mut lab) = lab(2) else { return };
    let endpoints = lab.etcd(1).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    init_cluster(&lab);
    lab.start_all().unwrap();
    // Both ways before the first ping: h2 must know h1 to answer.
    wait_peers(&lab, 0, &["h2"], 10);
    wait_peers(&lab, 1, &["h1"], 10);
    crosses(&lab, 0, 1);
    let h2 = lab
        .etcdctl("get /netpath/subnets/10.244.12.0-24 --print-value-only")
        .unwrap();
    let h2 = h2.trim();
    assert!(h2.contains("\"host\":\"h2\""), "{h2}");
    // What a broken or hostile writer could leave: not JSON, a key that is no subnet, a
    // well-formed registration of another host over part of h2's subnet.
    let evil = h2.replace("\"host\":\"h2\"", "\"host\":\"evil\"");
    for (key, value) in [
        ("10.244.50.0-24", "not-json"),
        ("not-a-subnet", h2),
        ("10.244.12.0-25", evil.as_str()),
    ] {
        lab.etcdctl(&format!("put /netpath/subnets/{key} {value}"))
            .unwrap();
    }
    thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("etcd: skipping"), "{log}");
    assert!(log.contains("etcd: skipped"), "{log}");
    // Nothing changed: the same peer, traffic both ways, and after a restart (which
    // lists the garbage afresh) too.
    assert_eq!(etcd_peers(&lab, 0), ["h2"]);
    crosses(&lab, 0, 1);
    crosses(&lab, 1, 0);
    lab.kill_agent(0);
    lab.start(0).unwrap();
    wait_peers(&lab, 0, &["h2"], 10);
    crosses(&lab, 0, 1);
    lab.teardown().unwrap();
}

#[test]
fn simulate_measures_each_member_and_leaves_nothing_behind() {
    let Some(mut lab) = Lab::hosts(1, 0) else {
        return;
    };
    let endpoints = lab.etcd(3).unwrap();
    lab.write_fleet_configs(&endpoints, 5).unwrap();
    let config = lab.hosts[0].config.to_str().unwrap().to_owned();
    let simulate = |extra: &[&str]| {
        let mut args = vec!["cluster", "simulate", "--config", &config];
        args.extend_from_slice(extra);
        lab.netpath(0, &args).output().unwrap()
    };
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Bad settings are refused before anything is written.
    let o = simulate(&["--prefix", "/netpath"]);
    assert!(
        !o.status.success() && err(&o).contains("not the fleet's own"),
        "{o:?}"
    );
    let o = simulate(&["--agents", "1"]);
    assert!(
        !o.status.success() && err(&o).contains("use 2 to 50000"),
        "{o:?}"
    );
    lab.etcdctl("put /netpath-taken/x y").unwrap();
    let o = simulate(&["--prefix", "/netpath-taken", "--agents", "5"]);
    assert!(
        !o.status.success() && err(&o).contains("1 keys are under /netpath-taken"),
        "{o:?}"
    );
    assert_eq!(
        lab.etcdctl("get /netpath-taken/x --print-value-only")
            .unwrap()
            .trim(),
        "y",
        "a refused simulation leaves what was there"
    );

    // 30 hosts spread over the members, renewing, watching the churn; all agree at the end.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--agents",
            "30",
            "--for",
            "1",
            "--lease-ttl",
            "5",
            "--churn",
            "20",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = simulate(&args);
        assert!(o.status.success(), "{o:?}");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let r = run(&["--prefix", "/netpath-sim"]);
    assert_eq!(r["agreed"], 30, "{r:#}");
    let steady = r["steady"].as_array().unwrap();
    assert_eq!(steady.len(), 3, "every member's metrics read: {r:#}");
    let sum = |f: &str| steady.iter().map(|m| m[f].as_f64().unwrap()).sum::<f64>();
    assert!(sum("keepalives_per_sec") > 0.0, "{r:#}");
    assert!(sum("watch_sent_per_sec") > 0.0, "{r:#}");
    assert!(
        steady
            .iter()
            .all(|m| m["watch_streams"].as_f64().unwrap() >= 1.0),
        "the hosts spread over the members: {r:#}"
    );
    assert_eq!(sum("watch_streams"), 30.0, "{r:#}");
    assert!(
        lab.etcdctl("get /netpath-sim/ --prefix --keys-only")
            .unwrap()
            .trim()
            .is_empty(),
        "the simulation's keys are gone"
    );
    // All on the first member, as with agents configured with one endpoint.
    let r = run(&["--prefix", "/netpath-sim", "--one-member"]);
    let streams: Vec<f64> = r["steady"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["watch_streams"].as_f64().unwrap())
        .collect();
    assert_eq!(streams, [30.0, 0.0, 0.0], "{r:#}");
    lab.teardown().unwrap();
}
