//! etcd's side of `cargo xtask bench`: the load many hosts' agents put on a 3-member etcd.
//! `netpath cluster simulate` runs the agents' fleet tasks (lease, claim, renewals,
//! listing, watch; no datapath) for N hosts that exist only as etcd entries, in one
//! process on a lab host, and reads each member's /metrics around their start and a steady
//! window. The cases vary what shapes the load: the lease (renewals every third of it),
//! hosts coming and going (each write an event to every watch), and whether the hosts
//! spread over the members or all talk to the first.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, output};
use serde_json::{Value, json};

/// One simulation: its name, hosts (None: the run's), lease seconds, churn writes per
/// second, one member only.
struct Case {
    name: &'static str,
    agents: Option<usize>,
    lease_ttl: u64,
    churn: f64,
    one_member: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "2 hosts: etcd's own floor",
        agents: Some(2),
        lease_ttl: 60,
        churn: 0.0,
        one_member: false,
    },
    Case {
        name: "default (lease 60 s), idle",
        agents: None,
        lease_ttl: 60,
        churn: 0.0,
        one_member: false,
    },
    Case {
        name: "lease 15 s, idle",
        agents: None,
        lease_ttl: 15,
        churn: 0.0,
        one_member: false,
    },
    Case {
        name: "lease 180 s, idle",
        agents: None,
        lease_ttl: 180,
        churn: 0.0,
        one_member: false,
    },
    Case {
        name: "default, 2 hosts' writes/s",
        agents: None,
        lease_ttl: 60,
        churn: 2.0,
        one_member: false,
    },
    Case {
        name: "default, 5 hosts' writes/s",
        agents: None,
        lease_ttl: 60,
        churn: 5.0,
        one_member: false,
    },
    Case {
        name: "default, 5 writes/s, all on the first member",
        agents: None,
        lease_ttl: 60,
        churn: 5.0,
        one_member: true,
    },
];

/// The smoke test's one case: every part (renewals, churn, metrics) in a few seconds.
const SMOKE: &[Case] = &[Case {
    name: "lease 6 s, 10 hosts' writes/s",
    agents: None,
    lease_ttl: 6,
    churn: 10.0,
    one_member: false,
}];

/// Runs every case (`smoke`: one short one) with `agents` simulated hosts and a steady
/// window of `secs` (at least two renewals); returns the report's section and its JSON.
pub fn run(agents: usize, secs: u64, smoke: bool) -> Result<(String, Value)> {
    let cases = if smoke { SMOKE } else { CASES };
    crate::bench::in_lab(1, |lab| measure(lab, cases, agents, secs))
}

fn measure(lab: &mut Lab, cases: &[Case], agents: usize, secs: u64) -> Result<(String, Value)> {
    let endpoints = lab.etcd(3)?;
    lab.write_fleet_configs(&endpoints, 60)?;
    let config = lab.hosts[0].config.display().to_string();
    let mut md = format!(
        "\n### etcd's side: {agents} simulated hosts on a 3-member etcd\n\n\
         `netpath cluster simulate` on one lab host: each simulated host is the agent's fleet task (lease, claim, renewals, listing, watch; no datapath) with a connection of its own; etcd's figures from each member's /metrics, summed over the members (CPU: of one core; the members share this machine with the simulation).\n\n\
         | case ({agents} hosts unless named) | start s | start requests | steady req/s | renewals/s (of hosts / (lease / 3)) | watch events/s | etcd CPU % (busiest member) | etcd RSS MiB (largest) | watches per member | simulation CPU % | agree |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        eprintln!("[bench] etcd: {}", c.name);
        let agents_s = c.agents.unwrap_or(agents).to_string();
        let (secs_s, ttl_s, churn_s) = (
            secs.to_string(),
            c.lease_ttl.to_string(),
            c.churn.to_string(),
        );
        let prefix = format!("/netpath-simulate-{i}");
        let mut args = vec![
            "cluster",
            "simulate",
            "--config",
            &config,
            "--agents",
            &agents_s,
            "--for",
            &secs_s,
            "--lease-ttl",
            &ttl_s,
            "--churn",
            &churn_s,
            "--prefix",
            &prefix,
            "--json",
        ];
        if c.one_member {
            args.push("--one-member");
        }
        let r: Value = serde_json::from_str(&output(&mut lab.netpath(0, &args))?)
            .context("cluster simulate's JSON")?;
        let read = |phase: &str| r[phase].as_array().map_or(0, Vec::len);
        if read("start") != 3 || read("steady") != 3 {
            bail!(
                "{}: the metrics of only {} of 3 members were read",
                c.name,
                read("steady")
            );
        }
        let sum = |phase: &str, f: &str| -> f64 {
            r[phase]
                .as_array()
                .map_or(0.0, |m| m.iter().filter_map(|x| x[f].as_f64()).sum())
        };
        let max = |phase: &str, f: &str| -> f64 {
            r[phase].as_array().map_or(0.0, |m| {
                m.iter().filter_map(|x| x[f].as_f64()).fold(0.0, f64::max)
            })
        };
        let start_requests = sum("start", "requests");
        let watches: Vec<String> = r["steady"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| format!("{:.0}", x["watch_streams"].as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.0} | {:.1} | {:.1} of {:.1} | {:.0} | {:.1} ({:.1}) | {:.0} | {} | {:.0} | {}/{} |",
            c.name,
            r["converged_secs"].as_f64().unwrap_or(0.0),
            start_requests,
            sum("steady", "requests_per_sec"),
            sum("steady", "keepalives_per_sec"),
            c.agents.unwrap_or(agents) as f64 / (c.lease_ttl / 3) as f64,
            sum("steady", "watch_sent_per_sec"),
            sum("steady", "cpu") * 100.0,
            max("steady", "cpu") * 100.0,
            max("steady", "rss_mib"),
            watches.join(" / "),
            r["sim_cpu"].as_f64().unwrap_or(0.0) * 100.0,
            r["agreed"],
            r["agents"],
        );
        rows.push(
            json!({"case": c.name, "lease_ttl": c.lease_ttl, "churn_per_sec": c.churn,
            "one_member": c.one_member, "report": r}),
        );
    }
    Ok((
        md,
        json!({"agents": agents, "window_secs": secs, "cases": rows}),
    ))
}
