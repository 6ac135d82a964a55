//! The operator's tooling: completions and man page generated from the CLI, and
//! `stats --watch` against a live lab with traffic crossing.

use std::{process::Command, thread, time::Duration};

use netpath_tests::{Lab, PeerMode, Spec, netpath_bin, ping};

fn netpath(args: &[&str]) -> std::process::Output {
    Command::new(netpath_bin())
        .args(args)
        .output()
        .expect("run netpath")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = netpath(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {o:?}");
        let text = stdout(&o);
        for word in [
            "policy",
            "publish",
            "peer",
            "stats",
            "dump",
            "--watch",
            "--pin-dir",
        ] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let o = netpath(&["completions", "tcsh"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("possible values"),
        "{o:?}"
    );
}

#[test]
fn man_pages_for_the_command_and_each_subcommand() {
    let o = netpath(&["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH netpath"), "{page}");
    assert!(page.contains("eBPF datapath"), "{page}");
    let dir = tempdir();
    let o = netpath(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    for page in [
        "netpath.1",
        "netpath-policy-add.1",
        "netpath-stats.1",
        "netpath-bench.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let add = std::fs::read_to_string(dir.join("netpath-policy-add.1")).unwrap();
    assert!(add.contains("action"), "policy add page names its options");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("np-man-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn stats_watch_refuses_bad_intervals() {
    for bad in ["0", "-1", "abc", "7200"] {
        let o = netpath(&["stats", &format!("--watch={bad}")]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("seconds between 0.1 and 3600"), "{bad}: {err}");
    }
    let o = netpath(&["stats", "--count", "2"]);
    assert!(!o.status.success(), "--count without --watch");
}

#[test]
fn stats_watch_shows_rates_of_live_traffic() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let mut lab = Lab::new(Spec::default()).expect("lab");
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    lab.start_all().unwrap();
    let (from, to) = (
        lab.hosts[0].containers[0].ns.clone(),
        lab.hosts[1].containers[0].ip.clone(),
    );
    // Traffic while watching: 10 pings a second for 3 s.
    let pinger = thread::spawn(move || ping(&from, &to, 30, "0.1"));
    thread::sleep(Duration::from_millis(300));
    let out =
        netpath_tests::output(lab.netpath(0, &["stats", "--watch", "1", "--count", "2", "--json"]))
            .unwrap();
    let (sent, got, _) = pinger.join().unwrap().unwrap();
    assert_eq!(got, sent);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for r in &lines {
        let interval = r["interval_s"].as_f64().unwrap();
        assert!((0.9..3.0).contains(&interval), "{r}");
        let fwd = r["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["reason"] == "fwd-direct")
            .unwrap_or_else(|| panic!("no fwd-direct rate: {r}"));
        // 10 echo requests a second leave through host 0; a second's worth, give or take.
        let pps = fwd["packets_per_s"].as_f64().unwrap();
        assert!((4.0..=20.0).contains(&pps), "fwd-direct {pps}/s: {r}");
        let peer = &r["peers"][0];
        assert_eq!(peer["name"], lab.hosts[1].name.as_str());
        assert!(peer["tx_packets_per_s"].as_f64().unwrap() > 4.0, "{r}");
    }
    // The text form redraws in place.
    let text = netpath_tests::output(lab.netpath(0, &["stats", "--watch", "0.2", "--count", "1"]))
        .unwrap();
    assert!(text.starts_with("\x1b[H\x1b[2J"), "{text:?}");
    assert!(text.contains("rates over the last"), "{text}");
}
