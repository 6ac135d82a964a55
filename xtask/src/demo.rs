//! `cargo xtask demo`: 3 hosts with 2 containers each, netpath on every host, traffic
//! across, counters; then the same lab with plain kernel routing for comparison. Removes
//! everything at the end, also on Ctrl-C.

use anyhow::Result;
use netpath_tests::{Lab, PeerMode, Spec, output};

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

pub fn run() -> Result<()> {
    title("building the lab: 3 hosts x 2 containers in network namespaces");
    let mut lab = Lab::new(Spec {
        hosts: 3,
        containers: 2,
        locked_down: true,
        outside: false,
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
        "every host: ip_forward=0, iptables FORWARD policy DROP, nat POSTROUTING empty, no routes to peer subnets"
    );

    title("netpath, direct (host-gw) mode");
    lab.write_configs(|_, _| PeerMode::Direct)?;
    lab.start_all()?;
    let (np_rtt, np_gbps) = traffic(&mut lab)?;
    for i in 0..lab.hosts.len() {
        title(&format!("netpath stats on {}", lab.hosts[i].name));
        eprint!("{}", output(lab.netpath(i, &["stats"]))?);
    }

    title("netpath, vxlan mode: configs switched, agents restarted (the datapath is adopted live)");
    lab.write_configs(|_, _| PeerMode::Vxlan)?;
    for i in 0..lab.hosts.len() {
        lab.kill_agent(i);
        lab.start(i)?;
    }
    let (vx_rtt, vx_gbps) = traffic(&mut lab)?;
    title(&format!("netpath stats on {}", lab.hosts[0].name));
    eprint!("{}", output(lab.netpath(0, &["stats"]))?);

    title("the same lab with plain kernel routing (ip_forward, static routes), netpath down");
    for i in 0..lab.hosts.len() {
        output(lab.netpath(i, &["down"]))?;
    }
    lab.kernel_routing()?;
    let (k_rtt, k_gbps) = traffic(&mut lab)?;

    title("summary");
    eprintln!("{:<22} {:>14} {:>14}", "", "median RTT ms", "TCP Gbit/s");
    eprintln!(
        "{:<22} {:>14.3} {:>14.1}",
        "netpath direct", np_rtt, np_gbps
    );
    eprintln!("{:<22} {:>14.3} {:>14.1}", "netpath vxlan", vx_rtt, vx_gbps);
    eprintln!("{:<22} {:>14.3} {:>14.1}", "kernel routing", k_rtt, k_gbps);
    title("removing the lab");
    lab.teardown()?;
    eprintln!("done");
    Ok(())
}
