//! Policy after a flow's first packet, the `policy` part of `cargo xtask bench` (issue 31
//! item 3): what 1,000 policy rules cost the traffic of flows already decided, on two
//! containers of one host and on two containers of two hosts (direct).
//!
//! Two identical labs of each kind run at once, one with the rules and one without, and
//! short samples alternate between them (request/response on one connection, then small
//! UDP), so that the machine's swings, which move a whole path by a tenth between
//! repetitions minutes apart, fall on both sides of each ratio alike. Halfway through the
//! labs swap roles (each agent restarted with the other config): whatever one lab has
//! that the other has not (where its processes land) then counts once for and once
//! against the rules. Reported per kind: the median of the paired ratios (rules / none)
//! with its 95% confidence interval, each half's median, and a verdict on the goal
//! (0.95x) only where the interval gives one.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, Result};
use netpath_tests::{Lab, PeerMode};
use serde_json::{Value, json};

use crate::bench::{self, Ends};

/// Policy rules on the side that has them (none of them matching the traffic; the
/// default allows).
const RULES: usize = 1000;
/// The goal: traffic with the rules at least this share of the traffic without.
const GOAL: f64 = 0.95;

/// How much is measured.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Pairs of samples in each half.
    pub pairs: usize,
    /// Seconds of each sample's request/response and of its UDP flood.
    pub secs: f64,
    /// Halves measured: 2 (the labs swap roles in between), or 1 (a smoke test).
    pub halves: usize,
}

impl Size {
    pub const QUICK: Size = Size {
        pairs: 1,
        secs: 0.3,
        halves: 1,
    };
    pub const FULL: Size = Size {
        pairs: 20,
        secs: 0.5,
        halves: 2,
    };
}

/// What the labs of a kind are, and how one is built.
struct Kind {
    name: &'static str,
    build: fn() -> Result<(Lab, Ends)>,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "same host",
        build: bench::same_host_lab,
    },
    Kind {
        name: "across hosts, direct",
        build: bench::two_hosts,
    },
];

/// One sample: request/response transactions/s, its p50 (µs), small UDP delivered/s,
/// the CPU the lab's agents used meanwhile (ms per second), and what each busy program
/// cost per run during the UDP flood (`netpath profile` on every host: "h1
/// np_from_container", ns).
#[derive(Clone)]
struct Sample {
    rr: f64,
    p50: f64,
    udp: f64,
    agent_ms: f64,
    programs: Vec<(String, f64)>,
}

/// The paired figures of one kind: ratios rules / none, p50 differences rules - none,
/// each with the half it was measured in (0: the first lab has the rules).
#[derive(Default)]
struct Pairs {
    rr: Vec<(usize, f64)>,
    udp: Vec<(usize, f64)>,
    p50_diff: Vec<(usize, f64)>,
    /// The agents' CPU, ms per second: with the rules, without.
    agent_ms: (Vec<f64>, Vec<f64>),
    /// Each busy program's ns per run during the floods: with the rules, without.
    programs: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)>,
}

pub fn run(size: Size) -> Result<(String, Value)> {
    let mut md = format!(
        "\n### Policy after a flow's first packet: {RULES} rules against none\n\n\
         Two labs of each kind at once, one with the rules, samples alternating between them \
         ({} pairs of {} s each way, the labs swapping roles halfway); ratios are rules / none: \
         median [95% confidence interval of the median], and each half's median. Goal: \
         {GOAL}x or more; a verdict only where the interval says it.\n\n\
         | kind | request/response | p50 difference, µs | small UDP | halves (rr; UDP) | verdict (rr; UDP) | agents' CPU, ms/s (rules; none) |\n\
         |---|---|---|---|---|---|---|\n",
        size.halves.clamp(1, 2) * size.pairs,
        size.secs
    );
    let mut rows = Vec::new();
    let mut programs_md = String::from(
        "\nWhat each busy program cost per packet during the floods (`netpath profile`, \
         the kernel's timing, two clock reads of it included), medians:\n\n\
         | kind | host, program | ns/run, rules | ns/run, none | difference |\n|---|---|---|---|---|\n",
    );
    for kind in KINDS {
        eprintln!("[bench] policy after the first packet: {}", kind.name);
        let mut labs = [(kind.build)()?, (kind.build)()?];
        let measured = crossover(&mut labs, size);
        for (lab, _) in &mut labs {
            lab.teardown()?;
        }
        let p =
            measured.with_context(|| format!("policy after the first packet, {}", kind.name))?;
        let (rr, udp, diff) = (
            Median::of(&p.rr),
            Median::of(&p.udp),
            Median::of(&p.p50_diff),
        );
        let halves = |v: &[(usize, f64)]| [0, 1].map(|h| half(v, h));
        let (rr_h, udp_h) = (halves(&p.rr), halves(&p.udp));
        let _ = writeln!(
            md,
            "| {} | {:.3}x [{:.3}-{:.3}] | {:+.1} [{:+.1} to {:+.1}] | {:.3}x [{:.3}-{:.3}] | {}, {}; {}, {} | {}; {} | {:.1}; {:.1} |",
            kind.name,
            rr.median,
            rr.lo,
            rr.hi,
            diff.median,
            diff.lo,
            diff.hi,
            udp.median,
            udp.lo,
            udp.hi,
            shown(rr_h[0]),
            shown(rr_h[1]),
            shown(udp_h[0]),
            shown(udp_h[1]),
            rr.verdict(),
            udp.verdict(),
            bench::spread(&p.agent_ms.0).0,
            bench::spread(&p.agent_ms.1).0,
        );
        for (name, (on, off)) in &p.programs {
            let (a, b) = (bench::spread(on).0, bench::spread(off).0);
            programs_md += &format!(
                "| {} | {name} | {a:.0} | {b:.0} | {:+.0} |\n",
                kind.name,
                a - b
            );
        }
        let series = |v: &[(usize, f64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
        rows.push(json!({
            "kind": kind.name,
            "rules": RULES,
            "pairs": p.rr.len(),
            "secs": size.secs,
            "rr_ratio": rr.json(rr_h, series(&p.rr)),
            "udp_ratio": udp.json(udp_h, series(&p.udp)),
            "p50_diff_us": diff.json([half(&p.p50_diff, 0), half(&p.p50_diff, 1)], series(&p.p50_diff)),
            "agent_cpu_ms_per_s": {"rules": p.agent_ms.0, "none": p.agent_ms.1},
            "programs_ns_per_run": p.programs.iter().map(|(k, (on, off))| (k.clone(), json!({"rules": on, "none": off}))).collect::<serde_json::Map<String, Value>>(),
        }));
    }
    md += &programs_md;
    Ok((md, json!(rows)))
}

/// A median with its 95% confidence interval, distribution-free (the sign test's): the
/// k-th smallest and the k-th largest value, k = floor((n - 1.96 sqrt(n)) / 2) and at
/// least one. Below [`MIN_PAIRS`] values even the smallest and the largest bound the
/// median with less than 95% confidence (1 - 2^(1-n)): no verdict then.
struct Median {
    median: f64,
    lo: f64,
    hi: f64,
    n: usize,
}

/// The fewest values whose extremes bound the median with 95% confidence.
const MIN_PAIRS: usize = 6;

impl Median {
    fn of(v: &[(usize, f64)]) -> Median {
        let mut s: Vec<f64> = v.iter().map(|x| x.1).filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Median {
                median: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
                n: 0,
            };
        }
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let k = (((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0).floor() as usize).max(1);
        Median {
            median: bench::spread(&s).0,
            lo: s[k - 1],
            hi: s[n - k],
            n,
        }
    }

    /// What the interval says of a ratio against the goal.
    fn verdict(&self) -> &'static str {
        if self.n < MIN_PAIRS {
            "too few pairs"
        } else if self.lo >= GOAL {
            "meets the goal"
        } else if self.hi < GOAL {
            "misses the goal"
        } else {
            "cannot tell"
        }
    }

    fn json(&self, halves: [f64; 2], samples: Vec<f64>) -> Value {
        json!({"median": self.median, "ci95": [self.lo, self.hi], "halves": halves,
            "verdict": self.verdict(), "samples": samples})
    }
}

/// The two halves on `labs`: in half `h`, lab `h` has the rules.
fn crossover(labs: &mut [(Lab, Ends); 2], size: Size) -> Result<Pairs> {
    let mut p = Pairs::default();
    for h in 0..size.halves.clamp(1, 2) {
        for (k, (lab, _)) in labs.iter_mut().enumerate() {
            configure(lab, k == h)?;
        }
        for pair in 0..size.pairs {
            // Which lab goes first alternates too.
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut got = [None, None];
            for k in order {
                let (lab, e) = &labs[k];
                got[k] =
                    Some(sample(lab, e, size.secs).with_context(|| format!("half {h}, lab {k}"))?);
            }
            let [a, b] = got;
            let (a, b) = (a.expect("measured"), b.expect("measured"));
            let (on, off) = if h == 0 { (a, b) } else { (b, a) };
            eprintln!(
                "[bench]     half {h} pair {pair}: rr {:.0} / {:.0}/s, p50 {:.1} / {:.1} µs, udp {:.0} / {:.0}/s, agents {:.1} / {:.1} ms/s (rules / none)",
                on.rr, off.rr, on.p50, off.p50, on.udp, off.udp, on.agent_ms, off.agent_ms
            );
            p.rr.push((h, on.rr / off.rr));
            p.udp.push((h, on.udp / off.udp));
            p.p50_diff.push((h, on.p50 - off.p50));
            p.agent_ms.0.push(on.agent_ms);
            p.agent_ms.1.push(off.agent_ms);
            for (side, sample) in [(0, &on), (1, &off)] {
                for (name, ns) in &sample.programs {
                    let e = p.programs.entry(name.clone()).or_default();
                    if side == 0 {
                        e.0.push(*ns)
                    } else {
                        e.1.push(*ns)
                    }
                }
            }
        }
    }
    Ok(p)
}

/// (Re)starts netpath on every host of `lab`, with the rules or without, and has every
/// container learned (two containers that only talk to each other are not in the host's
/// neighbour table otherwise).
fn configure(lab: &mut Lab, rules: bool) -> Result<()> {
    for i in 0..lab.hosts.len() {
        lab.kill_agent(i);
    }
    lab.write_configs(|_, _| PeerMode::Direct)?;
    for i in 0..lab.hosts.len() {
        if rules {
            lab.append_config(i, &bench::rules_config(RULES))?;
        }
        lab.start(i)?;
    }
    for i in 0..lab.hosts.len() {
        for c in lab.hosts[i].containers.clone() {
            lab.learn(i, &c)?;
        }
    }
    Ok(())
}

/// One sample on `e` of `lab`, after a ping that checks the path and warms it.
fn sample(lab: &Lab, e: &Ends, secs: f64) -> Result<Sample> {
    let (got, _) = bench::ping(&e.client, &e.to, 3)?;
    if got != "3/3" {
        anyhow::bail!("ping lost packets ({got})");
    }
    let agents = || -> Result<f64> {
        (0..lab.hosts.len())
            .map(|i| crate::fleet_bench::cpu_s(lab.agent_pid(i).context("an agent not running")?))
            .sum()
    };
    let (cpu0, t0) = (agents()?, std::time::Instant::now());
    let (rr, p50, _) = bench::rr(e, secs).context("request/response")?;
    // The programs under the flood: profiled on every host from just after the flood
    // starts (the sink is given 200 ms first) until just before it ends.
    let profiles: Vec<_> = (0..lab.hosts.len())
        .map(|i| {
            let mut cmd = lab.netpath(
                i,
                &["profile", "--secs", &format!("{}", secs * 0.7), "--json"],
            );
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(0.2 + secs * 0.15));
                netpath_tests::output(&mut cmd)
            })
        })
        .collect();
    let (udp, _) = bench::udp_pps(e, secs).context("UDP packets/s")?;
    let mut programs = Vec::new();
    for (i, t) in profiles.into_iter().enumerate() {
        let out = t
            .join()
            .map_err(|_| anyhow::anyhow!("profile thread"))?
            .context("netpath profile")?;
        let v: Value = serde_json::from_str(&out).context("netpath profile --json")?;
        for c in v["programs"].as_array().into_iter().flatten() {
            // Busy: a flood's packets, not the odd ARP.
            if c["runs"].as_u64().unwrap_or(0) >= 1000
                && let (Some(name), Some(ns)) = (c["program"].as_str(), c["ns_per_run"].as_f64())
            {
                programs.push((format!("h{} {name}", i + 1), ns));
            }
        }
    }
    let agent_ms = 1000.0 * (agents()? - cpu0) / t0.elapsed().as_secs_f64();
    Ok(Sample {
        rr,
        p50,
        udp,
        agent_ms,
        programs,
    })
}

/// A ratio with three decimals, "-" where there is none (a half not measured).
fn shown(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

/// The median of half `h`'s values.
fn half(v: &[(usize, f64)], h: usize) -> f64 {
    let s: Vec<f64> = v.iter().filter(|x| x.0 == h).map(|x| x.1).collect();
    bench::spread(&s).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_medians_interval_widens_with_few_values_and_halves_split() {
        let v: Vec<(usize, f64)> = (1..=9).map(|i| (i % 2, i as f64)).collect();
        let m = Median::of(&v);
        assert_eq!(m.median, 5.0);
        // 9 values: k = floor((9 - 5.88) / 2) = 1, the smallest and the largest.
        assert_eq!((m.lo, m.hi), (1.0, 9.0));
        // 40 values: k = 13, the 13th smallest and the 13th largest.
        let forty: Vec<(usize, f64)> = (1..=40).map(|i| (0, i as f64)).collect();
        let m = Median::of(&forty);
        assert_eq!((m.lo, m.hi), (13.0, 28.0));
        let two = [(0, 0.5), (0, 0.6)];
        assert_eq!(Median::of(&two).verdict(), "too few pairs");
        let many: Vec<(usize, f64)> = (0..400)
            .map(|i| (0, 0.9 + (i % 20) as f64 * 0.01))
            .collect();
        let m = Median::of(&many);
        assert!(m.hi - m.lo < 0.031, "{} {}", m.lo, m.hi);
        assert_eq!(m.verdict(), "meets the goal");
        let wide: Vec<(usize, f64)> = (0..9).map(|i| (0, 0.8 + i as f64 * 0.04)).collect();
        assert_eq!(Median::of(&wide).verdict(), "cannot tell");
        let below: Vec<(usize, f64)> = (0..50).map(|i| (0, 0.8 + i as f64 * 0.001)).collect();
        assert_eq!(Median::of(&below).verdict(), "misses the goal");
        assert!(Median::of(&[]).median.is_nan());
        assert_eq!(half(&v, 0), 5.0);
        assert_eq!(half(&v, 1), 5.0);
    }
}
