//! `cargo xtask demo`: 3 hosts with 2 containers each, netpath on every host, traffic
//! across, counters; then the same lab with plain kernel routing for comparison. Removes
//! everything at the end, also on Ctrl-C.

use anyhow::{Result, bail};
use netpath_tests::{Lab, PeerMode, Spec, in_ns, output};

use crate::bench::{iperf, ping};

fn title(s: &str) {
    eprintln!("\n=== {s} ===");
}

fn traffic(lab: &mut Lab) -> Result<(f64, f64)> {
    let mut rtts = Vec::new();
    eprintln!(
        "{:<14} {:<14} {:>8} {:>10}",
        "FROM", "TO", "PING", "RTT(ms)"
    );
    for a in 0..lab.hosts.len() {
        for b in 0..lab.hosts.len() {
            if a == b {
                continue;
            }
            for (ca, cb) in [(0, 0), (1, 1)] {
                let (from_ns, from_ip) = (
                    &lab.hosts[a].containers[ca].ns,
                    &lab.hosts[a].containers[ca].ip,
                );
                let to_ip = &lab.hosts[b].containers[cb].ip;
                let (got, rtt) = ping(from_ns, to_ip, 5)?;
                rtts.push(rtt);
                eprintln!(
                    "{:<14} {:<14} {:>8} {:>10.3}",
                    format!("h{}/{from_ip}", a + 1),
                    format!("h{}/{to_ip}", b + 1),
                    got,
                    rtt
                );
            }
        }
    }
    let from = lab.hosts[0].containers[0].ns.clone();
    let server = lab.hosts[1].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    let gbps = iperf(lab, &server, &from, &to, 3)?;
    rtts.sort_by(|a, b| a.total_cmp(b));
    let median = rtts[rtts.len() / 2];
    eprintln!(
        "TCP h1 -> h2 (iperf3, 1 stream, 3 s): {gbps:.1} Gbit/s; median ping RTT {median:.3} ms"
    );
    Ok((median, gbps))
}

/// Masquerade from a container of every host to the outside host, and h1's published port
/// from the outside host; then h1's translated flows.
fn outside_traffic(lab: &mut Lab) -> Result<()> {
    let probe = netpath_tests::probe_bin();
    let out = lab.outside().addr.clone();
    for h in &lab.hosts {
        let c = &h.containers[0];
        let (got, rtt) = ping(&c.ns, &out, 3)?;
        let tcp = output(in_ns(
            &c.ns,
            &format!("{} check tcp {out} 7000", probe.display()),
        ));
        eprintln!(
            "{:<14} -> outside {out}: ping {got} ({rtt:.3} ms), TCP {}",
            format!("{}/{}", h.name, c.ip),
            if tcp.is_ok() { "ok" } else { "FAILED" }
        );
        if tcp.is_err() {
            bail!("TCP to the outside failed from {}", h.name);
        }
    }
    let h1 = &lab.hosts[0];
    let published = output(in_ns(
        &lab.outside().ns,
        &format!("{} check tcp {} 8080", probe.display(), h1.underlay),
    ));
    eprintln!(
        "outside -> {}:8080 (published: {}:7000): TCP {}",
        h1.underlay,
        h1.containers[0].ip,
        if published.is_ok() { "ok" } else { "FAILED" }
    );
    if published.is_err() {
        bail!("the published port did not answer");
    }
    title("netpath dump conntrack on h1");
    eprint!("{}", output(lab.netpath(0, &["dump", "conntrack"]))?);
    Ok(())
}

/// Two hosts running real dockerd (Debian's 20.10, Docker's iptables rules in place,
/// `userland-proxy` off, `bip` and `default-address-pools` from `netpath subnet`):
/// `docker run` containers across the hosts, a user-defined network's container reached
/// from the other host, a `docker run -p` port from the outside host with the nat table
/// flushed, served by netpath from Docker's API.
fn docker_hosts() -> Result<()> {
    title(
        "Docker hosts: 2 hosts each running its own dockerd, userland-proxy off, Docker's iptables rules in place",
    );
    let mut lab = Lab::new(Spec {
        hosts: 2,
        containers: 0,
        locked_down: true,
        outside: true,
    })?;
    let daemon = lab.network_configs(PeerMode::Vxlan, false)?;
    eprintln!(
        "h1's daemon.json from `netpath subnet --network-len 27`: {}",
        daemon[0]
    );
    lab.dockerds_with(&daemon, false)?;
    let probe = netpath_tests::probe_bin().display().to_string();
    let web = lab.docker_serve(0, "web", &["8080:7000"])?;
    let client = lab.docker_run(1, "client", &["np-probe", "sleep", "3600"])?;
    eprintln!(
        "h1: docker run -p 8080:7000 --name web -> {web}; h2: docker run --name client -> {client}"
    );
    lab.network_configs(PeerMode::Vxlan, true)?;
    lab.start_all()?;
    // A user-defined network, as compose makes one, created while the agents run.
    output(lab.docker(0, &["network", "create", "shop"]))?;
    output(lab.docker(
        0,
        &[
            "run", "-d", "--name", "cart", "--net", "shop", "np-probe", "sleep", "3600",
        ],
    ))?;
    let cart = lab.docker_addr(0, "cart", "shop")?;
    // The agent's first listing of the engine.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !output(lab.netpath(0, &["publish", "list"]))?.contains("docker") {
        if std::time::Instant::now() > until {
            anyhow::bail!("h1's agent did not take web's port from Docker within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    title("netpath publish list on h1 (origin docker: from Docker's API)");
    eprint!("{}", output(lab.netpath(0, &["publish", "list"]))?);
    title(
        "client (h2) -> web (h1) through vxlan, Docker's FORWARD DROP and isolation chains in place",
    );
    eprint!(
        "{}",
        output(lab.docker(1, &["exec", "client", "ping", "-c", "3", "-i", "0.2", &web]))?
    );
    title(
        "iptables -t nat -F on both hosts (Docker's DNAT and MASQUERADE gone), then the outside host -> h1:8080",
    );
    for h in &lab.hosts {
        output(netpath_tests::in_ns(&h.ns, "iptables -t nat -F"))?;
    }
    let h1 = lab.hosts[0].underlay.clone();
    let out = lab.outside().ns.clone();
    eprintln!(
        "np-probe check tcp {h1} 8080 (100 kB echoed): {}",
        match output(netpath_tests::in_ns(
            &out,
            &format!("{probe} check tcp {h1} 8080 100000")
        )) {
            Ok(_) => "answered".to_owned(),
            Err(e) => format!("FAILED: {e:#}"),
        }
    );
    title("netpath network list on h1 (every bridge network, from Docker's API)");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !output(lab.netpath(0, &["network", "list"]))?.contains("shop") {
        if std::time::Instant::now() > until {
            anyhow::bail!("h1's agent did not take network shop from Docker within 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprint!("{}", output(lab.netpath(0, &["network", "list"]))?);
    title("client (h2) -> cart (h1, network shop) through vxlan");
    eprint!(
        "{}",
        output(lab.docker(
            1,
            &["exec", "client", "ping", "-c", "3", "-i", "0.2", &cart]
        ))?
    );
    title("netpath status on h1 (docker line)");
    let st = lab.netpath(0, &["status"]).output()?;
    for l in String::from_utf8_lossy(&st.stdout)
        .lines()
        .filter(|l| l.starts_with("docker:"))
    {
        eprintln!("{l}");
    }
    lab.teardown()
}

/// The overlay seed's workflow on two real Docker hosts of one etcd, without swarm: a
/// network created on one host, seen on the other, `docker run --ip` on each, the two
/// containers talking by the names `--add-host` gives them; a `--ip` held on the other
/// host refused.
fn across_hosts() -> Result<()> {
    title("Docker networks across hosts: 2 Docker hosts on one etcd member, no swarm");
    let mut lab = Lab::new(Spec {
        hosts: 2,
        containers: 0,
        locked_down: true,
        outside: false,
    })?;
    let endpoints = lab.etcd(1)?;
    lab.write_fleet_configs(&endpoints, 10)?;
    for i in 0..2 {
        lab.dockerd(i, &netpath_tests::docker::DockerOptions::default())?;
        lab.use_docker(i)?;
    }
    lab.start_all()?;
    let c1 = lab.hosts[0].config.display().to_string();
    title("h1$ netpath network create net1 --subnet 10.244.70.0/24 (vxlan, a VNI of its own)");
    eprint!(
        "{}",
        output(lab.netpath(
            0,
            &[
                "network",
                "create",
                "net1",
                "--subnet",
                "10.244.70.0/24",
                "--config",
                &c1
            ]
        ))?
    );
    let t0 = std::time::Instant::now();
    let seen = |lab: &Lab| -> Result<bool> {
        Ok(
            output(lab.docker(1, &["network", "ls", "--format", "{{.Name}}"]))?
                .lines()
                .any(|l| l == "net1"),
        )
    };
    while !seen(&lab)? {
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            anyhow::bail!("net1 did not appear on h2's Docker within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    title(&format!(
        "h2$ docker network ls (net1 there {:.1} s after the create)",
        t0.elapsed().as_secs_f64()
    ));
    eprint!("{}", output(lab.docker(1, &["network", "ls"]))?);
    for (i, me, ip, other, its) in [
        (0, "test1", "10.244.70.3", "test2", "10.244.70.4"),
        (1, "test2", "10.244.70.4", "test1", "10.244.70.3"),
    ] {
        let add = format!("{other}:{its}");
        title(&format!(
            "h{}$ docker run -d --net net1 --ip {ip} --add-host {add} --name {me} np-busybox sleep 3600",
            i + 1
        ));
        output(lab.docker(
            i,
            &[
                "run",
                "-d",
                "--net",
                "net1",
                "--ip",
                ip,
                "--add-host",
                &add,
                "--name",
                me,
                "np-busybox",
                "sleep",
                "3600",
            ],
        ))?;
    }
    title("h2$ docker exec test2 ping -c 3 test1 (across hosts, one subnet)");
    eprint!(
        "{}",
        output(lab.docker(
            1,
            &["exec", "test2", "ping", "-c", "3", "-i", "0.2", "test1"]
        ))?
    );
    title("h1$ docker exec test1 ping -c 3 test2");
    eprint!(
        "{}",
        output(lab.docker(
            0,
            &["exec", "test1", "ping", "-c", "3", "-i", "0.2", "test2"]
        ))?
    );
    title("h2$ docker run --net net1 --ip 10.244.70.3 ... (held on h1: refused)");
    let clash = lab
        .docker(
            1,
            &[
                "run",
                "-d",
                "--net",
                "net1",
                "--ip",
                "10.244.70.3",
                "np-busybox",
                "true",
            ],
        )
        .output()?;
    anyhow::ensure!(
        !clash.status.success(),
        "a --ip held on h1 was given on h2 too"
    );
    eprint!("{}", String::from_utf8_lossy(&clash.stderr));
    title("h1$ netpath network show net1");
    eprint!(
        "{}",
        output(lab.netpath(0, &["network", "show", "net1", "--config", &c1]))?
    );
    lab.teardown()
}

pub fn run() -> Result<()> {
    title("building the lab: 3 hosts x 2 containers in network namespaces");
    let mut lab = Lab::new(Spec {
        hosts: 3,
        containers: 2,
        locked_down: true,
        outside: true,
    })?;
    let id = lab.id.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: removing the lab");
        netpath_tests::remove_lab(&id);
        std::process::exit(130);
    })?;
    for h in &lab.hosts {
        eprintln!(
            "{}: uplink eth0 {} | bridge br0 {} | containers {}",
            h.name,
            h.underlay,
            h.subnet,
            h.containers
                .iter()
                .map(|c| c.ip.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!(
        "outside host {} on the fabric: an echo server on port 7000, no route to any container",
        lab.outside().addr
    );
    eprintln!(
        "every host: ip_forward=0, iptables FORWARD policy DROP, nat table empty, no routes to peer subnets"
    );
    let probe = netpath_tests::probe_bin();
    for ns in [
        lab.outside().ns.clone(),
        lab.hosts[0].containers[0].ns.clone(),
    ] {
        lab.spawn_in(&ns, &probe, &["serve", "7000", "3600"])?;
    }

    title("netpath, direct (host-gw) mode; masquerade on, h1 publishes tcp 8080 -> h1c1:7000");
    let write = |lab: &Lab, mode: PeerMode| -> Result<()> {
        lab.write_configs(|_, _| mode)?;
        for i in 0..lab.hosts.len() {
            lab.set_host_option(i, "masquerade", "true")?;
        }
        lab.append_config(
            0,
            &format!(
                "[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"{}\"\nport = 7000\n",
                lab.hosts[0].containers[0].ip
            ),
        )
    };
    write(&lab, PeerMode::Direct)?;
    lab.start_all()?;
    let (np_rtt, np_gbps) = traffic(&mut lab)?;
    title("masquerade to the outside host, and the published port from it");
    outside_traffic(&mut lab)?;
    for i in 0..lab.hosts.len() {
        title(&format!("netpath stats on {}", lab.hosts[i].name));
        eprint!("{}", output(lab.netpath(i, &["stats"]))?);
    }

    title("netpath, vxlan mode: configs switched, agents restarted (the datapath is adopted live)");
    write(&lab, PeerMode::Vxlan)?;
    for i in 0..lab.hosts.len() {
        lab.kill_agent(i);
        lab.start(i)?;
    }
    let (vx_rtt, vx_gbps) = traffic(&mut lab)?;
    title(&format!("netpath stats on {}", lab.hosts[0].name));
    eprint!("{}", output(lab.netpath(0, &["stats"]))?);
    title(&format!("netpath status on {}", lab.hosts[0].name));
    // Exit 1 would only mean a problem it lists: show it either way.
    let st = lab.netpath(0, &["status"]).output()?;
    eprint!("{}", String::from_utf8_lossy(&st.stdout));
    let (from, to) = (
        lab.hosts[0].containers[0].ip.clone(),
        lab.hosts[1].containers[0].ip.clone(),
    );
    title(&format!(
        "netpath trace on {}: tcp {from} -> {to}:80",
        lab.hosts[0].name
    ));
    eprint!(
        "{}",
        output(lab.netpath(
            0,
            &[
                "trace", "--from", &from, "--to", &to, "--proto", "tcp", "--port", "80"
            ]
        ))?
    );

    title("the fleet on etcd: an etcd member on the fabric (198.18.0.2), configs without peers");
    let endpoints = lab.etcd(1)?;
    lab.write_fleet_configs(&endpoints, 10)?;
    let config = lab.hosts[0].config.display().to_string();
    eprint!(
        "{}",
        output(
            lab.netpath(0, &["cluster", "init", "--config", &config])
                .args(["--cidr", "10.244.0.0/16", "--mode", "vxlan"])
        )?
    );
    for i in 0..lab.hosts.len() {
        lab.kill_agent(i);
        lab.start(i)?;
    }
    // Each agent registers itself and takes the others' registrations as peers.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while (0..lab.hosts.len()).any(|i| {
        output(lab.netpath(i, &["peer", "list", "--json"]))
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .and_then(|v| {
                v.as_array()
                    .map(|a| a.iter().filter(|p| p["origin"] == "etcd").count())
            })
            != Some(lab.hosts.len() - 1)
    }) {
        if std::time::Instant::now() > until {
            anyhow::bail!("the hosts did not find each other in etcd within 15 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    title(&format!("netpath cluster hosts on {}", lab.hosts[0].name));
    eprint!(
        "{}",
        output(lab.netpath(0, &["cluster", "hosts", "--config", &config]))?
    );
    title(&format!("netpath peer list on {}", lab.hosts[0].name));
    eprint!("{}", output(lab.netpath(0, &["peer", "list"]))?);
    let (fl_rtt, fl_gbps) = traffic(&mut lab)?;

    title("the same lab with plain kernel routing (ip_forward, static routes), netpath down");
    for i in 0..lab.hosts.len() {
        output(lab.netpath(i, &["down"]))?;
    }
    lab.kernel_routing()?;
    let (k_rtt, k_gbps) = traffic(&mut lab)?;

    if netpath_tests::docker::have_dockerd() {
        docker_hosts()?;
        across_hosts()?;
    } else {
        title("Docker hosts: skipped (no dockerd here; `cargo xtask setup` installs docker.io)");
    }

    title("summary");
    eprintln!("{:<22} {:>14} {:>14}", "", "median RTT ms", "TCP Gbit/s");
    eprintln!(
        "{:<22} {:>14.3} {:>14.1}",
        "netpath direct", np_rtt, np_gbps
    );
    eprintln!("{:<22} {:>14.3} {:>14.1}", "netpath vxlan", vx_rtt, vx_gbps);
    eprintln!(
        "{:<22} {:>14.3} {:>14.1}",
        "netpath, etcd fleet", fl_rtt, fl_gbps
    );
    eprintln!("{:<22} {:>14.3} {:>14.1}", "kernel routing", k_rtt, k_gbps);
    title("removing the lab");
    lab.teardown()?;
    eprintln!("done");
    Ok(())
}
