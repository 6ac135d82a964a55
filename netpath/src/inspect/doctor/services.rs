//! The services netpath follows, as the agent last saw them: Docker's engine (and what
//! Docker does beside netpath on this host) and the fleet's etcd.

use super::*;

/// A Docker host: the engine as the agent last saw it (`NP_DOCKER`), docker0's subnet
/// against netpath's, the userland proxy, and Docker's rules that meet what netpath
/// leaves to the stack.
pub(super) fn docker(maps: &Maps, bridge: &str, f: &mut Vec<Finding>) -> Result<()> {
    use crate::iface::Interfaces;
    let d = status::docker(maps, crate::maps::now())?;
    let Some(d) = d else {
        if bridge == "docker0" {
            f.push(bad(
                "docker",
                Level::Warn,
                "the bridge is docker0 but [docker] is not configured: `docker run -p` ports are Docker's DNAT and docker-proxy, cut by a flushed nat table",
                "add [docker] (socket = \"/var/run/docker.sock\") to the config and restart the agent",
            ));
        }
        return Ok(());
    };
    f.push(match (d.away_s, d.refused) {
        (Some(away), _) => bad(
            "docker",
            Level::Fail,
            format!(
                "the Docker engine has not answered for {away} s ({}): its published ports stay as they were, new containers' ports are not served",
                d.note.as_deref().unwrap_or("not reached yet")
            ),
            "check [docker].socket and that dockerd runs (docker version)",
        ),
        (None, n) if n > 0 => bad(
            "docker",
            Level::Warn,
            format!(
                "{n} port(s) Docker publishes are not served by netpath: {}",
                d.note.as_deref().unwrap_or("")
            ),
            "publish it on another host port, or remove the config's entry of that port (see the agent's log)",
        ),
        _ => ok(
            "docker",
            format!(
                "engine answering; {} running containers, {} published ports served in BPF",
                d.containers, d.ports
            ),
        ),
    });
    let subnet = maps.subnet().ok();
    let addrs = crate::iface::System.ipv4_addrs(bridge);
    if let Some(subnet) = subnet {
        let inside = addrs
            .iter()
            .find(|a| subnet.contains(&a.addr()) && a.prefix_len() >= subnet.prefix_len());
        f.push(if addrs.iter().any(|a| a.trunc() == subnet) {
            ok("docker", format!("{bridge}'s subnet is netpath's ({subnet})"))
        } else if let Some(a) = inside {
            ok(
                "docker",
                format!(
                    "{bridge}'s network {} is inside netpath's subnet {subnet}; the rest is for Docker's other networks",
                    a.trunc()
                ),
            )
        } else {
            let first = subnet.hosts().next().unwrap_or(subnet.network());
            bad(
                "docker",
                Level::Fail,
                format!(
                    "{bridge} has {}, netpath's subnet is {subnet}: Docker gives containers addresses netpath does not route",
                    if addrs.is_empty() {
                        "no IPv4 address".to_owned()
                    } else {
                        addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                    }
                ),
                format!(
                    "set \"bip\": \"{first}/{}\" in /etc/docker/daemon.json and restart dockerd (`netpath subnet --config ...` prints it, with the pools for Docker's other networks)",
                    subnet.prefix_len()
                ),
            )
        });
        let nets = crate::reconcile::networks::observe(maps)?;
        let served: Vec<String> = nets
            .iter()
            .map(|n| format!("{} {}", n.name, n.subnet))
            .collect();
        f.push(ok(
            "docker",
            format!("{} networks served: {}", nets.len(), served.join(", ")),
        ));
        for why in crate::inspect::networks::outside(&nets, subnet) {
            let (problem, fix) = why.split_once(". ").unwrap_or((&why, ""));
            f.push(bad(
                "docker",
                Level::Warn,
                problem.to_owned(),
                fix.to_owned(),
            ));
        }
    }
    let proxies = in_this_netns("docker-proxy");
    if proxies > 0 {
        f.push(bad(
            "docker",
            Level::Warn,
            format!(
                "Docker's userland proxy runs ({proxies} docker-proxy processes): netpath serves the published ports before it sees them, it only holds their ports and memory"
            ),
            "set \"userland-proxy\": false in /etc/docker/daemon.json and restart dockerd",
        ));
    }
    // Docker 28's raw-table drops for container addresses, and its FORWARD chains, only
    // meet what netpath leaves to the host's stack.
    if let Some(raw) = command("iptables-save", &["-t", "raw"]) {
        let drops = raw
            .lines()
            .filter(|l| {
                l.starts_with("-A PREROUTING")
                    && l.contains(&format!("! -i {bridge}"))
                    && l.ends_with("-j DROP")
            })
            .count();
        if drops > 0 {
            f.push(ok(
                "docker",
                format!(
                    "{drops} raw PREROUTING drops for container addresses (Docker 28): netpath delivers into containers without the host's stack, so its traffic never meets them; only what it passes to the stack does"
                ),
            ));
        }
    }
    Ok(())
}

/// The fleet's store, as the agent last saw it (`NP_FLEET`); nothing without `[etcd]`.
pub(super) fn etcd(maps: &Maps, f: &mut Vec<Finding>) -> Result<()> {
    let Some(s) = status::fleet(maps, crate::maps::now())? else {
        return Ok(());
    };
    f.push(if s.subnet_taken {
        bad(
            "etcd",
            Level::Fail,
            "this host's subnet is registered in etcd by another host: this host is not registered, the others do not route to it",
            "give it another [host].subnet (`netpath cluster hosts --config ...` shows who holds what)",
        )
    } else if let Some(away) = s.away_s {
        bad(
            "etcd",
            Level::Warn,
            format!("etcd has not answered for {away} s: the datapath stays as it was ({} other hosts as peers); changes in the fleet are not seen", s.hosts),
            "check [etcd].endpoints, the members (etcdctl endpoint health) and the route to them",
        )
    } else {
        ok(
            "etcd",
            format!(
                "registered, {} other hosts, last answer {} s ago{}",
                s.hosts,
                s.last_answer_s.unwrap_or(0),
                if s.skipped > 0 {
                    format!(", {} registrations skipped (see the agent's log)", s.skipped)
                } else {
                    String::new()
                }
            ),
        )
    });
    Ok(())
}
