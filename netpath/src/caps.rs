//! The capabilities the agent needs, and the check `netpath run` makes before it changes
//! anything: a missing one is named with what it is for, instead of a kernel's EPERM from
//! somewhere deep in loading or attaching. The service unit (dist/netpath.service) bounds
//! the agent to exactly this set; tests/tests/service.rs holds the two together, and the
//! lab runs every agent under it.

/// A capability the agent needs: its number (linux/capability.h), its name, and why.
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
    pub why: &'static str,
}

/// Everything `netpath run` needs, and nothing more (docs/install.md says the same).
pub const AGENT: &[Cap] = &[
    Cap {
        bit: 12,
        name: "CAP_NET_ADMIN",
        why: "to load the TC and XDP programs (BPF_PROG_LOAD of these types is refused without it) and attach them to interfaces",
    },
    Cap {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        why: "with [docker], to read a container's interfaces (/proc/PID/root/sys/class/net) and find its veth: the kernel asks it of a process that lacks some of the container's own capabilities",
    },
    Cap {
        bit: 38,
        name: "CAP_PERFMON",
        why: "for the verifier to accept the programs' pointer arithmetic (without it: \"pointer arithmetic with it prohibited for !root\")",
    },
    Cap {
        bit: 39,
        name: "CAP_BPF",
        why: "to create, pin and reopen the maps and to load the programs (bpf(2))",
    },
];

/// The effective capabilities of this process (`CapEff` of /proc/self/status).
pub fn effective() -> anyhow::Result<u64> {
    use anyhow::Context;
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading this process's capabilities (/proc/self/status)")?;
    parse_effective(&status).context("no CapEff line in /proc/self/status")
}

fn parse_effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Those of `needed` that `effective` lacks.
pub fn missing(effective: u64, needed: &'static [Cap]) -> Vec<&'static Cap> {
    needed
        .iter()
        .filter(|c| effective & (1 << c.bit) == 0)
        .collect()
}

/// Refuses, naming each capability the agent lacks and what for, before anything changes.
pub fn check_agent() -> anyhow::Result<()> {
    let lacking = missing(effective()?, AGENT);
    if lacking.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = lacking
        .iter()
        .map(|c| format!("  - {}: {}", c.name, c.why))
        .collect();
    anyhow::bail!(
        "netpath run lacks {} capabilit{}:\n{}\nrun it as root, or give it {} (the service unit's CapabilityBoundingSet= lists what it needs); nothing was changed",
        lacking.len(),
        if lacking.len() == 1 { "y" } else { "ies" },
        list.join("\n"),
        AGENT.iter().map(|c| c.name).collect::<Vec<_>>().join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capeff_is_read_and_the_missing_ones_are_named() {
        let status = "Name:\tnetpath\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let eff = parse_effective(status).unwrap();
        // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): CAP_SYS_PTRACE lacks.
        let names: Vec<_> = missing(eff, AGENT).iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_SYS_PTRACE"]);
        assert!(missing(u64::MAX, AGENT).is_empty());
        assert_eq!(missing(0, AGENT).len(), AGENT.len());
        assert_eq!(parse_effective("Name:\tx\n"), None);
    }
}
