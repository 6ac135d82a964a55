//! `netpath doctor`: the classic checklist for "container A cannot reach B", asked of
//! this host: kernel features, bpffs, the sysctls that matter, reverse-path filtering,
//! MTUs of uplink, bridge and tunnel, netfilter rules that still see container traffic,
//! conntrack pressure, and whether each peer's underlay address answers. Every finding
//! says what to do.

mod across;
mod peers;
mod services;

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    inspect::{report, status},
    maps::Maps,
    pin::PinDir,
};

use peers::peers;
use services::{docker, etcd};

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize, Debug)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    /// What to do; None when all is well.
    pub fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    check: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        level,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn sysctl(key: &str) -> Option<String> {
    read(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// Runs every check. Host facts are read in the caller's network namespace: run it where
/// the agent runs. With the agent's `config`, networks across hosts are checked against
/// etcd and Docker, and the IPAM plugin's socket is asked.
pub fn run(pins: &PinDir, probe_wait: Duration, config: Option<&Path>) -> Result<Vec<Finding>> {
    let mut f = Vec::new();
    kernel(&mut f);
    bpffs(pins, &mut f);
    let maps = match Maps::open(pins) {
        Ok(m) => m,
        Err(e) => {
            f.push(bad(
                "datapath",
                Level::Fail,
                format!("{e:#}"),
                "start the agent: netpath run --config /etc/netpath/netpath.toml",
            ));
            return Ok(f);
        }
    };
    let st = status::status(pins);
    match &st {
        Ok(s) if s.problems.is_empty() => f.push(ok(
            "datapath",
            format!(
                "attached on {} and {} ({} programs), agent running",
                s.bridge,
                s.uplink,
                s.attachments.len()
            ),
        )),
        Ok(s) => {
            for p in &s.problems {
                f.push(bad(
                    "datapath",
                    Level::Fail,
                    p.clone(),
                    "see `netpath status`",
                ));
            }
        }
        Err(e) => f.push(bad(
            "datapath",
            Level::Fail,
            format!("{e:#}"),
            "see `netpath status`",
        )),
    }
    let agent = report::agent_row(&maps)?;
    sysctls(&agent.uplink, &agent.bridge, &mut f);
    mtu(&maps, &agent.uplink, &agent.bridge, &mut f)?;
    endpoints(&maps, &agent.bridge, &mut f)?;
    etcd(&maps, &mut f)?;
    docker(&maps, &agent.bridge, &mut f)?;
    match config {
        Some(c) => across::across(c, &maps, &mut f)?,
        None => {
            let spanning = crate::reconcile::networks::observe(&maps)?
                .iter()
                .filter(|n| n.span.is_some())
                .count();
            if spanning > 0 {
                f.push(bad(
                    "across-hosts",
                    Level::Warn,
                    format!("{spanning} networks across hosts, not checked against etcd and Docker without the config"),
                    "netpath doctor --config /etc/netpath/netpath.toml",
                ));
            }
        }
    }
    netfilter(&mut f);
    conntrack(
        st.as_ref().map(|s| s.maps.as_slice()).unwrap_or(&[]),
        &mut f,
    );
    peers(&maps, probe_wait, &mut f)?;
    Ok(f)
}

fn kernel(f: &mut Vec<Finding>) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let v = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    f.push(if v >= (6, 6) {
        ok(
            "kernel",
            format!("Linux {release}: TCX, XDP links, ring buffers, BPF_PROG_TEST_RUN"),
        )
    } else if v >= (5, 10) {
        bad(
            "kernel",
            Level::Warn,
            format!("Linux {release}: no TCX (6.6+), programs attach as clsact filters"),
            "works, but upgrade to 6.6+ for TCX links that survive agent restarts atomically",
        )
    } else {
        bad(
            "kernel",
            Level::Fail,
            format!("Linux {release} is older than 5.10"),
            "netpath needs 5.10 or later (bpf_redirect_neigh, ring buffers, XDP links)",
        )
    });
    f.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        ok("btf", "kernel BTF present")
    } else {
        bad(
            "btf",
            Level::Warn,
            "no /sys/kernel/btf/vmlinux",
            "build the kernel with CONFIG_DEBUG_INFO_BTF=y (tools like bpftool show less without it)",
        )
    });
    f.push(match sysctl("net.core.bpf_jit_enable").as_deref() {
        Some("1") | Some("2") => ok("bpf jit", "net.core.bpf_jit_enable = 1"),
        Some(v) => bad(
            "bpf jit",
            Level::Warn,
            format!("net.core.bpf_jit_enable = {v}: programs run in the interpreter, several times slower"),
            "sysctl -w net.core.bpf_jit_enable=1",
        ),
        None => ok(
            "bpf jit",
            "net.core.bpf_jit_enable is not visible in this network namespace (the host's applies)",
        ),
    });
}

fn bpffs(pins: &PinDir, f: &mut Vec<Finding>) {
    f.push(if crate::pin::is_bpffs(&pins.root) {
        ok("bpffs", format!("{} is on a bpf filesystem", pins.root.display()))
    } else {
        bad(
            "bpffs",
            Level::Fail,
            format!("{} is not on a bpf filesystem (or does not exist)", pins.root.display()),
            "mount -t bpf bpf /sys/fs/bpf (the agent does it when the pin dir is below it), then start the agent",
        )
    });
}

fn sysctls(uplink: &str, bridge: &str, f: &mut Vec<Finding>) {
    // Reverse-path filtering: strict mode drops packets that netpath leaves to the stack
    // when the host would route the reply another way (container subnets of peers).
    let rp = |i: &str| {
        sysctl(&format!("net.ipv4.conf.{i}.rp_filter")).and_then(|v| v.parse::<u32>().ok())
    };
    let all = rp("all").unwrap_or(0);
    let mut strict = Vec::new();
    for i in [uplink, bridge] {
        // The kernel uses the larger of "all" and the interface's own value.
        if all.max(rp(i).unwrap_or(0)) == 1 {
            strict.push(i.to_owned());
        }
    }
    f.push(if strict.is_empty() {
        ok("rp_filter", format!("not strict on {uplink} and {bridge}"))
    } else {
        bad(
            "rp_filter",
            Level::Warn,
            format!(
                "strict reverse-path filtering (rp_filter = 1) on {}: packets netpath passes to the host stack from addresses the host routes elsewhere are dropped silently",
                strict.join(", ")
            ),
            format!(
                "use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{uplink}.rp_filter=2 net.ipv4.conf.{bridge}.rp_filter=2"
            ),
        )
    });
    f.push(match sysctl("net.ipv4.ip_forward").as_deref() {
        Some("1") => ok(
            "ip_forward",
            "net.ipv4.ip_forward = 1 (netpath does not need it; the kernel also routes what netpath passes)",
        ),
        _ => ok(
            "ip_forward",
            "net.ipv4.ip_forward = 0: netpath forwards without it; what it passes to the stack is not routed",
        ),
    });
}

/// A link: name, MTU, ifindex of the bridge it is a port of, its own ifindex.
type LinkFacts = (String, u32, Option<u32>, u32);

/// Every link of this network namespace. Asked over rtnetlink: /sys shows the namespace
/// it was mounted in, not ours.
fn links() -> Result<Vec<LinkFacts>> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let mut out = Vec::new();
        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await? {
            let (mut name, mut mtu, mut controller) = (String::new(), 0, None);
            for a in &msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    LinkAttribute::Controller(c) => controller = Some(*c),
                    _ => {}
                }
            }
            out.push((name, mtu, controller, msg.header.index));
        }
        Ok(out)
    })
}

fn mtu(maps: &Maps, uplink: &str, bridge: &str, f: &mut Vec<Finding>) -> Result<()> {
    let links = links()?;
    let mtu_of = |n: &str| links.iter().find(|l| l.0 == n).map(|l| l.1);
    let (Some(up), Some(br)) = (mtu_of(uplink), mtu_of(bridge)) else {
        f.push(bad(
            "mtu",
            Level::Fail,
            format!(
                "cannot read the MTU of {uplink} or {bridge}: is this the host's network namespace?"
            ),
            "run netpath doctor where the agent runs",
        ));
        return Ok(());
    };
    let cfg = maps.config()?;
    let vxlan = report::peer_rows(maps)?.iter().any(|p| p.mode == "vxlan");
    let tunnel = up.saturating_sub(netpath_common::VXLAN_OVERHEAD);
    // Container-facing MTUs: the bridge and its ports.
    let bridge_index = links.iter().find(|l| l.0 == bridge).map(|l| l.3);
    let ports: Vec<(String, u32)> = links
        .iter()
        .filter(|l| l.2.is_some() && l.2 == bridge_index)
        .map(|l| (l.0.clone(), l.1))
        .collect();
    let biggest = ports.iter().map(|p| p.1).chain([br]).max().unwrap_or(br);
    if biggest > up {
        f.push(bad(
            "mtu",
            Level::Fail,
            format!("containers may send {biggest}-byte packets but the uplink {uplink} carries {up}: bigger packets to peers are lost"),
            format!("ip link set {bridge} mtu {up} (and the containers' interfaces)"),
        ));
    } else if vxlan && biggest > tunnel {
        f.push(bad(
            "mtu",
            Level::Warn,
            format!(
                "containers send up to {biggest} bytes, the tunnel carries {tunnel} (uplink {up} - {}): netpath clamps TCP MSS to {} and answers bigger packets with ICMP fragmentation-needed, which costs a round trip per new path",
                netpath_common::VXLAN_OVERHEAD,
                cfg.tunnel_mss
            ),
            format!("set the container MTU to {tunnel} (docker network create --opt com.docker.network.driver.mtu={tunnel}), or raise the uplink MTU to {}", biggest + netpath_common::VXLAN_OVERHEAD),
        ));
    } else {
        f.push(ok(
            "mtu",
            format!(
                "uplink {uplink} {up}, bridge {bridge} {br}{}, largest container port {biggest}",
                if vxlan {
                    format!(", tunnel {tunnel}")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

/// Whether every container port of the bridge has an endpoint (its container is
/// delivered to straight), and every endpoint a port.
fn endpoints(maps: &Maps, bridge: &str, f: &mut Vec<Finding>) -> Result<()> {
    let links = links()?;
    let Some(bridge_index) = links.iter().find(|l| l.0 == bridge).map(|l| l.3) else {
        return Ok(());
    };
    let ports: Vec<&LinkFacts> = links.iter().filter(|l| l.2 == Some(bridge_index)).collect();
    let eps = crate::inspect::dump::endpoints(maps)?;
    let unknown: Vec<&str> = ports
        .iter()
        .filter(|p| !eps.iter().any(|e| e.ifindex == p.3))
        .map(|p| p.0.as_str())
        .collect();
    let stale: Vec<String> = eps
        .iter()
        .filter(|e| !ports.iter().any(|p| p.3 == e.ifindex))
        .map(|e| format!("{} (ifindex {})", e.address, e.ifindex))
        .collect();
    if !stale.is_empty() {
        f.push(bad(
            "endpoints",
            Level::Warn,
            format!(
                "{} endpoints name no port of {bridge}: {}",
                stale.len(),
                stale.join(", ")
            ),
            "the agent removes them at its next link or neighbour event (is it running?)",
        ));
    }
    if unknown.is_empty() {
        f.push(ok(
            "endpoints",
            format!(
                "{} container ports on {bridge}, each with its endpoint: delivered straight (bpf_redirect_peer)",
                ports.len()
            ),
        ));
    } else {
        // Normal for a container that has said nothing yet: informational.
        f.push(ok(
            "endpoints",
            format!(
                "{} of {} container ports on {bridge} have no endpoint yet ({}): their containers have sent nothing to their gateway and received nothing from another host, so traffic to them goes through the bridge (counted fwd-via-bridge) until they do",
                unknown.len(),
                ports.len(),
                unknown.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Processes named `name` in this network namespace.
fn in_this_netns(name: &str) -> usize {
    let me = std::fs::read_link("/proc/self/ns/net").ok();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| read(p.path().join("comm")).is_some_and(|c| c.trim() == name))
        .filter(|p| std::fs::read_link(p.path().join("ns/net")).ok() == me)
        .count()
}

fn command(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Netfilter still sees what netpath leaves to the stack, and, with
/// bridge-nf-call-iptables, traffic between containers of this host.
fn netfilter(f: &mut Vec<Finding>) {
    let brnf = sysctl("net.bridge.bridge-nf-call-iptables");
    let rules = command("iptables-save", &[]);
    let forward_drop = rules.as_deref().is_some_and(|r| {
        r.lines().any(|l| {
            l.starts_with(":FORWARD DROP")
                || (l.starts_with("-A FORWARD") && l.ends_with("-j DROP"))
        })
    });
    match (brnf.as_deref(), forward_drop) {
        (Some("1"), true) => f.push(bad(
            "netfilter",
            Level::Warn,
            "net.bridge.bridge-nf-call-iptables = 1 and the iptables FORWARD chain drops: traffic between containers of this host is filtered by iptables after netpath's policy allowed it",
            "sysctl -w net.bridge.bridge-nf-call-iptables=0 (netpath's policy covers same-host traffic), or accept the bridge's traffic in FORWARD",
        )),
        (Some("1"), false) => f.push(bad(
            "netfilter",
            Level::Warn,
            "net.bridge.bridge-nf-call-iptables = 1: bridged traffic between containers also runs through iptables (and conntrack)",
            "sysctl -w net.bridge.bridge-nf-call-iptables=0 unless something else needs it",
        )),
        _ => f.push(ok(
            "netfilter",
            if rules.is_some() {
                "bridged traffic bypasses iptables; netpath's forwarding runs before netfilter"
            } else {
                "bridged traffic bypasses iptables; iptables-save not installed, rules not read"
            },
        )),
    }
    // A raw or mangle rule dropping VXLAN or container traffic only matters for what is
    // passed to the stack; MASQUERADE of the container subnet is harmless. Report nft
    // chains with a drop policy on the input and forward hooks as a pointer.
    if let Some(nft) = command("nft", &["list", "ruleset"]) {
        let drops: Vec<&str> = nft
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("type filter hook input") && l.contains("policy drop"))
            .collect();
        if !drops.is_empty() {
            f.push(bad(
                "netfilter",
                Level::Warn,
                "an nftables input chain drops by default: ICMP errors and traffic netpath leaves to the host (ARP is unaffected) may be dropped",
                "allow icmp and, for vxlan peers on a Linux vxlan device, udp dport 4789 from the peers in the input chain",
            ));
        }
    }
}

/// `maps`: the rows `status` read (its fill levels), not read again.
fn conntrack(maps: &[status::MapRow], f: &mut Vec<Finding>) {
    for m in maps {
        if m.name != netpath_common::map_names::CT {
            continue;
        }
        let pct = m.fill_pct.unwrap_or(0.0);
        f.push(if pct >= 80.0 {
            bad(
                "conntrack",
                Level::Warn,
                format!("netpath's flow table is {pct:.0}% full ({} of {})", m.entries.unwrap_or(0), m.max_entries),
                "raise [conntrack] size (applies after `netpath down` and a new start) or lower the udp/tcp_established timeouts",
            )
        } else {
            ok("conntrack", format!("netpath's flow table: {} of {} entries", m.entries.unwrap_or(0), m.max_entries))
        });
    }
    if let (Some(n), Some(max)) = (
        sysctl("net.netfilter.nf_conntrack_count").and_then(|v| v.parse::<u64>().ok()),
        sysctl("net.netfilter.nf_conntrack_max").and_then(|v| v.parse::<u64>().ok()),
    ) {
        let pct = 100.0 * n as f64 / max.max(1) as f64;
        f.push(if pct >= 80.0 {
            bad(
                "conntrack",
                Level::Warn,
                format!("the kernel's conntrack table is {pct:.0}% full ({n} of {max}): the host's own connections start failing when it fills"),
                format!("sysctl -w net.netfilter.nf_conntrack_max={}", max * 2),
            )
        } else {
            ok("conntrack", format!("the kernel's conntrack table: {n} of {max}"))
        });
    }
}

pub fn text(findings: &[Finding]) -> String {
    let mut o = String::new();
    for x in findings {
        let tag = match x.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        o += &format!("{tag}  {:<11} {}\n", x.check, x.detail);
        if let Some(fix) = &x.fix {
            o += &format!("      {:<11} fix: {fix}\n", "");
        }
    }
    let (w, e) = (
        findings.iter().filter(|x| x.level == Level::Warn).count(),
        findings.iter().filter(|x| x.level == Level::Fail).count(),
    );
    o += &format!("\n{} checks: {e} failed, {w} warnings\n", findings.len());
    o
}
