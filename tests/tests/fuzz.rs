//! `netpath fuzz` in the test suite: 10^5 generated and mutated frames through every
//! program (the full run, 10^6 and more, is `netpath fuzz` itself). The seed is fixed so
//! that a failure here is the same failure on any machine.

use std::process::Command;

const SEED: &str = "20261202";

#[test]
fn a_hundred_thousand_fuzzed_frames_keep_every_invariant() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let out = Command::new(netpath_tests::netpath_bin())
        .args(["fuzz", "--frames", "100000", "--seed", SEED, "--json"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        r["failures_total"], 0,
        "invariants broken (`netpath fuzz --frames 100000 --seed {SEED}`): {:#}",
        r["failures"]
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(r["seed"], SEED.parse::<u64>().unwrap());
    // Every program ran; all but the few the test run refuses were run.
    let programs = r["programs"].as_object().unwrap();
    assert_eq!(programs.len(), 4, "{r}");
    let ran: u64 = programs.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(ran + r["refused"].as_u64().unwrap(), 100_000);
    assert!(r["refused"].as_u64().unwrap() < 5_000, "{r}");
    // The frames reach deep paths, not only the parser's drops: each of these reasons
    // was counted.
    let reasons = r["reasons"].as_object().unwrap();
    for want in [
        "fwd-direct",
        "fwd-vxlan-encap",
        "fwd-vxlan-decap",
        "fwd-deliver",
        "fwd-same-host",
        "fwd-via-bridge",
        "fwd-masquerade",
        "fwd-masquerade-reply",
        "fwd-published",
        "fwd-nat-icmp-error",
        "drop-malformed",
        "drop-vxlan-wrong-vni",
        "drop-vxlan-unknown-peer",
        "drop-vxlan-spoofed-src",
        "drop-vxlan-malformed",
        "drop-frag-needed",
        "drop-policy-deny",
        "drop-policy-reject",
        "drop-default-deny",
        "drop-default-reject",
        "drop-foreign-src",
        "drop-not-published",
        "pass-ttl-expired",
        "pass-not-ipv4",
    ] {
        assert!(reasons.contains_key(want), "no frame reached {want}: {r}");
    }
    assert!(r["frames_out"].as_u64().unwrap() > 10_000, "{r}");
    assert!(r["table_checks"].as_u64().unwrap() >= 12, "{r}");
    assert!(r["ct_entries"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn the_same_seed_gives_the_same_run_and_a_bad_count_is_refused() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let run = || {
        let out = Command::new(netpath_tests::netpath_bin())
            .args(["fuzz", "--frames", "3000", "--seed", "7", "--json"])
            .output()
            .unwrap();
        let mut r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        r.as_object_mut().unwrap().remove("seconds");
        r
    };
    assert_eq!(run(), run());
    let bad = Command::new(netpath_tests::netpath_bin())
        .args(["fuzz", "--frames", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--frames"),
        "{bad:?}"
    );
}
