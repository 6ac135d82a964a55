//! netpath as an operator installs and runs it: the Debian package (lintian, installed into
//! a scratch root and purged), the systemd unit (systemd-analyze), and the agent bounded to
//! the unit's capabilities, refusing to start without any one of them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use netpath_tests::{Lab, PeerMode, agent_caps, netpath_bin, ping};

/// The package `cargo xtask test` built (NETPATH_DEB), else the newest under
/// target/debian.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPATH_DEB") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        })
        .unwrap_or_else(|| panic!("no package in {}: run cargo xtask package", dir.display()))
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("np{}x-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every file the package must install.
const FILES: &[&str] = &[
    "usr/bin/netpath",
    "lib/systemd/system/netpath.service",
    "etc/netpath/netpath.toml",
    "usr/share/man/man1/netpath.1.gz",
    "usr/share/man/man1/netpath-run.1.gz",
    "usr/share/man/man1/netpath-peer-add.1.gz",
    "usr/share/bash-completion/completions/netpath",
    "usr/share/zsh/vendor-completions/_netpath",
    "usr/share/fish/vendor_completions.d/netpath.fish",
    "usr/share/doc/netpath/README.md",
    "usr/share/doc/netpath/docs/configuration.md",
    "usr/share/doc/netpath/docs/install.md",
    "usr/share/doc/netpath/docs/bench/history.md",
    "usr/share/doc/netpath/copyright",
    "usr/share/doc/netpath/changelog.gz",
];

#[test]
fn the_package_passes_lintian_installs_every_file_and_purges_clean() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let deb = deb();
    let lint = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian (cargo xtask setup installs it)");
    let said = String::from_utf8_lossy(&lint.stdout);
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        lint.status.success() && errors.is_empty(),
        "lintian ({}):\n{said}{}",
        lint.status,
        String::from_utf8_lossy(&lint.stderr)
    );

    // Installed by dpkg itself, into a root of its own with an empty package database.
    let root = Scratch::new("pkgroot");
    let r = &root.0;
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = || {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", r.display()))
            .args(["--force-depends", "--force-not-root"]);
        c
    };
    run_ok(dpkg().arg("--install").arg(&deb));
    for f in FILES {
        assert!(r.join(f).is_file(), "{f} not installed");
    }
    let version = run_ok(Command::new(r.join("usr/bin/netpath")).arg("--version"));
    assert_eq!(version.trim(), format!("netpath {VERSION}"));
    let page = run_ok(Command::new("zcat").arg(r.join("usr/share/man/man1/netpath.1.gz")));
    assert!(page.contains(".TH netpath"), "{page}");
    let bash =
        std::fs::read_to_string(r.join("usr/share/bash-completion/completions/netpath")).unwrap();
    assert!(
        bash.contains("peer") && bash.contains("--pin-dir"),
        "{bash}"
    );
    let status = run_ok(dpkg().args(["--status", "netpath"]));
    assert!(
        status.contains("Status: install ok installed")
            && status.contains("/etc/netpath/netpath.toml"),
        "the config is a conffile:\n{status}"
    );
    // The shipped config and unit are the tree's.
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (installed, ours) in [
        ("etc/netpath/netpath.toml", "dist/netpath.toml"),
        ("lib/systemd/system/netpath.service", "dist/netpath.service"),
    ] {
        assert_eq!(
            std::fs::read(r.join(installed)).unwrap(),
            std::fs::read(tree.join(ours)).unwrap(),
            "{installed}"
        );
    }

    // systemd's own reading of the unit, in that root (the units it names come from the
    // machine's systemd).
    if Path::new("/lib/systemd/system/sysinit.target").exists()
        && Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok()
    {
        run_ok(
            Command::new("cp")
                .args(["-rn", "/lib/systemd/system/."])
                .arg(r.join("lib/systemd/system")),
        );
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", r.display()))
            .arg("/lib/systemd/system/netpath.service")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // It warns of an unknown key or value and still exits 0: both must be clean.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify:\n{said}"
        );
    } else {
        eprintln!("SKIP (systemd-analyze verify): systemd is not installed here");
    }

    run_ok(dpkg().args(["--purge", "netpath"]));
    for f in FILES {
        assert!(!r.join(f).exists(), "{f} left after purge");
    }
}

/// Bits of capability names (`CAP_BPF`), as /proc/PID/status shows them.
fn bits(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| {
            let n = netpath::caps::AGENT
                .iter()
                .find(|k| k.name == c)
                .unwrap_or_else(|| panic!("{c} is not in netpath::caps::AGENT"));
            1u64 << n.bit
        })
        .sum()
}

fn status_caps(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} for {pid}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// The unit bounds the agent to exactly the set `netpath run` checks: no more, no less.
#[test]
fn the_service_unit_bounds_the_agent_to_the_set_it_needs() {
    let mut unit = agent_caps();
    unit.sort();
    let mut ours: Vec<String> = netpath::caps::AGENT
        .iter()
        .map(|c| c.name.to_owned())
        .collect();
    ours.sort();
    assert_eq!(
        unit, ours,
        "dist/netpath.service against netpath::caps::AGENT"
    );
}

#[test]
fn the_agent_runs_with_exactly_the_units_capabilities_and_names_any_it_lacks() {
    let Some(mut lab) = Lab::hosts(2, 1) else {
        return;
    };
    lab.write_configs(|_, _| PeerMode::Direct).unwrap();
    let caps = agent_caps();
    assert_eq!(caps.len(), netpath::caps::AGENT.len(), "{caps:?}");
    let config = lab.hosts[0].config.clone();
    for lacking in &caps {
        let rest: Vec<String> = caps.iter().filter(|c| *c != lacking).cloned().collect();
        let out = lab
            .netpath_with_caps(0, &netpath_bin(), Some(&rest), &["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without {lacking}: {err}");
        assert!(
            err.contains(&format!("lacks 1 capability:\n  - {lacking}: "))
                && err.contains("nothing was changed"),
            "without {lacking}: {err}"
        );
        let maps = lab.hosts[0].pin_dir.join("maps");
        assert!(
            std::fs::read_dir(&maps).map_or(true, |mut d| d.next().is_none()),
            "without {lacking}, something was pinned in {}",
            maps.display()
        );
    }
    // With exactly the set: the agents run (the lab starts every agent so) and forward.
    lab.start_all().unwrap();
    for i in 0..2 {
        let pid = lab.agent_pid(i).unwrap();
        assert_eq!(status_caps(pid, "CapEff:"), bits(&caps), "host {i}'s agent");
        assert_eq!(status_caps(pid, "CapBnd:"), bits(&caps), "host {i}'s agent");
    }
    let from = lab.hosts[0].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    let (_, got, _) = ping(&from, &to, 3, "0.2").unwrap();
    assert_eq!(got, 3, "{}", lab.diagnose(&[0, 1]));
}
