//! Bad input that is not a config file, a CLI argument or a packet (those have their own
//! tests): pinned maps changed behind netpath's back with bpftool, as an operator might.
//! Each gets a clear error or is put right; nothing is half-done. And maps the kernel has
//! no memory for (bpffs itself has no size to fill).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use netpath_common::map_names;
use netpath_tests::{Lab, PeerMode, Spec, ping, wait_for};

fn lab(hosts: usize) -> Option<Lab> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let lab = Lab::new(Spec {
        hosts,
        containers: 1,
        locked_down: true,
        outside: false,
    })
    .expect("build lab");
    lab.write_configs(|_, _| PeerMode::Direct).expect("configs");
    Some(lab)
}

/// Two hosts running netpath, and a container of the first with the address of one of
/// the second, shown to reach it.
fn two_hosts_up() -> Option<(Lab, String, String)> {
    let mut lab = lab(2)?;
    lab.start_all().unwrap();
    let from = lab.hosts[0].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    assert_eq!(ping(&from, &to, 2, "0.1").unwrap().1, 2);
    Some((lab, from, to))
}

/// Where host 0's map `name` is pinned.
fn pinned(lab: &Lab, name: &str) -> String {
    let path = lab.hosts[0].pin_dir.join("maps").join(name);
    path.to_str().unwrap().to_owned()
}

/// Writes `value` under `key` (bytes) in the map pinned at `map`.
fn update(map: &str, key: &[u8], value: &[u8]) {
    let (key, value) = (hex_args(key), hex_args(value));
    let mut args: Vec<&str> = vec!["map", "update", "pinned", map, "key"];
    args.extend(key.iter().map(String::as_str));
    args.push("value");
    args.extend(value.iter().map(String::as_str));
    bpftool(&args).unwrap();
}

/// `bpftool ARGS`; its stdout, or Err with its stderr.
fn bpftool(args: &[&str]) -> Result<String, String> {
    let o = Command::new("bpftool")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The value under `key` (bpftool's words) in the map pinned at `map`, as bytes.
fn lookup(map: &str, key: &[&str]) -> Vec<u8> {
    let out = bpftool(&[&["-j", "map", "lookup", "pinned", map, "key"], key].concat()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

/// Bytes as bpftool takes them: `0x0a 0xf4 ...`.
fn hex_args(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("0x{b:02x}")).collect()
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_and_nothing_is_attached() {
    let Some(mut lab) = lab(1) else { return };
    // What another build (or a hand) left: NP_CONFIG with a value of 8 bytes.
    let maps = lab.hosts[0].pin_dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let path = maps.join(map_names::CONFIG);
    let p = path.to_str().unwrap();
    bpftool(&[
        "map",
        "create",
        p,
        "type",
        "array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "1",
        "name",
        "np_config",
    ])
    .unwrap();
    let err = lab.start(0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("pinned map {p} has layout"))
            && msg.contains("netpath down --pin-dir"),
        "{msg}"
    );
    // Nothing else was created or attached.
    let pinned: Vec<_> = std::fs::read_dir(&maps)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    let links = lab.hosts[0].pin_dir.join("links");
    assert!(std::fs::read_dir(&links).map_or(true, |mut d| d.next().is_none()));
    // As the message says: `netpath down`, then it starts.
    let down = lab.netpath(0, &["down"]).output().unwrap();
    assert!(down.status.success(), "{down:?}");
    lab.start(0).unwrap();
    lab.teardown().unwrap();
}

#[test]
fn a_route_deleted_and_one_added_with_bpftool_are_put_right_by_the_agent() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };
    let peers = &pinned(&lab, map_names::PEERS);
    // LPM keys: prefix length (u32, host order), then the address.
    let route = |net: [u8; 3]| {
        let mut k = 24u32.to_ne_bytes().to_vec();
        k.extend(net);
        k.push(0);
        k
    };
    let (h2_key, stray_key) = (route([10, 244, 12]), route([10, 244, 77]));
    let (h2, stray) = (hex_args(&h2_key), hex_args(&stray_key));
    let value = lookup(peers, &h2.iter().map(String::as_str).collect::<Vec<_>>());
    let mut del: Vec<&str> = vec!["map", "delete", "pinned", peers, "key"];
    del.extend(h2.iter().map(String::as_str));
    bpftool(&del).unwrap();
    update(peers, &stray_key, &value);
    // h2's containers are unreachable now...
    assert_eq!(
        ping(&from, &to, 2, "0.1").unwrap().1,
        0,
        "the route is gone"
    );
    // ... until the agent's next check (every 30 s) puts both right.
    wait_for(
        40,
        || ping(&from, &to, 1, "0.1").unwrap().1 == 1,
        || format!("not put right: {}", lab.diagnose(&[0])),
    );
    let mut look: Vec<&str> = vec!["map", "lookup", "pinned", peers, "key"];
    look.extend(stray.iter().map(String::as_str));
    assert!(bpftool(&look).is_err(), "the stray route is still there");
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    // The missing route is written back (the peer itself did not change: restored), the
    // stray one counted as removed.
    assert!(
        log.contains("maps changed behind netpath's back, put right: host settings unchanged; networks: 0 added, 0 updated, 0 removed; peers: 0 added, 0 updated, 0 removed, 1 restored, 1 stray entries removed")
            && log.contains(&format!("(restored: {})", lab.hosts[1].name)),
        "{log}"
    );
    lab.teardown().unwrap();
}

#[test]
fn garbage_written_into_the_config_map_is_put_right_by_the_agent() {
    let Some((mut lab, from, to)) = two_hosts_up() else {
        return;
    };
    let config = &pinned(&lab, map_names::CONFIG);
    let read = || lookup(config, &["0", "0", "0", "0"]);
    let good = read();
    assert_eq!(good.len(), size_of::<netpath_common::Config>());
    // Every byte 0xa5: a subnet, addresses, flags and ifindexes that are nobody's.
    update(config, &[0; 4], &vec![0xa5; good.len()]);
    assert_ne!(read(), good);
    // The agent's next check (every 30 s) writes the host's settings back.
    wait_for(
        40,
        || read() == good,
        || format!("not put right: {}", lab.diagnose(&[0])),
    );
    assert_eq!(
        ping(&from, &to, 2, "0.1").unwrap().1,
        2,
        "{}",
        lab.diagnose(&[0])
    );
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains("maps changed behind netpath's back, put right: host settings written"),
        "{log}"
    );
    lab.teardown().unwrap();
}

/// A memory cgroup of the test's own under the test's (v1 `memory.limit_in_bytes` or v2
/// `memory.max`), removed when dropped.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("np-test-{}", std::process::id());
        let (dir, file) = if let Some(v1) = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let memory = f.nth(1)?.split(',').any(|c| c == "memory");
            memory.then(|| f.next().unwrap().to_string())
        }) {
            let base = std::path::Path::new("/sys/fs/cgroup/memory");
            (
                base.join(v1.trim_start_matches('/')).join(&name),
                "memory.limit_in_bytes",
            )
        } else {
            let v2 = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let base = std::path::Path::new("/sys/fs/cgroup");
            (
                base.join(v2.trim_start_matches('/')).join(&name),
                "memory.max",
            )
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join(file), limit.to_string()).unwrap();
        cg
    }

    /// Makes `cmd`'s process start in this cgroup.
    fn enter(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.0
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: between fork and exec only open, write and close, on memory made before.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A process still in it (a test that failed before stopping its agent) goes back
        // to the parent, which a cgroup must be empty to be removed.
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        let parent = self.0.parent().unwrap().join("cgroup.procs");
        for pid in procs.lines() {
            let _ = std::fs::write(&parent, pid);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn maps_the_kernel_has_no_memory_for_are_refused_clearly_and_nothing_is_left() {
    let Some(mut lab) = lab(2) else { return };
    // bpffs has no size to fill: what runs out is the memory maps are charged to (the
    // creating process's memory cgroup). 16M entries of the conntrack and of the NAT
    // table, the largest the config takes, are more than the agent's cgroup may have.
    let config = lab.hosts[0].config.clone();
    let good = std::fs::read_to_string(&config).unwrap();
    lab.append_config(0, "[conntrack]\nsize = 16777216\n")
        .unwrap();
    let cg = MemoryCgroup::new(256 << 20);
    let mut run = lab.netpath(0, &["run", "--config"]);
    run.arg(&config);
    cg.enter(&mut run);
    let out = run.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // Either table can be the first created.
    assert!(
        [map_names::CT, map_names::NAT]
            .iter()
            .any(|m| err.contains(&format!("the kernel has no memory for map {m} ")))
            && err.contains("16777216 entries")
            && err.contains("lower [conntrack].size (default 65536)"),
        "{err}"
    );
    // Nothing was attached and nothing is left pinned.
    let pins = &lab.hosts[0].pin_dir;
    for dir in ["maps", "links"] {
        let left: Vec<_> = std::fs::read_dir(pins.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    // As the message says: with the default size it starts in the same cgroup, and
    // forwards.
    std::fs::write(&config, good).unwrap();
    lab.start_with(0, &netpath_tests::netpath_bin(), |c| cg.enter(c))
        .unwrap();
    lab.start(1).unwrap();
    let (from, to) = (
        &lab.hosts[0].containers[0].ns,
        &lab.hosts[1].containers[0].ip,
    );
    assert_eq!(
        ping(from, to, 2, "0.1").unwrap().1,
        2,
        "{}",
        lab.diagnose(&[0, 1])
    );
    lab.stop_agent(0);
    drop(cg);
    lab.teardown().unwrap();
}

/// Agents a test started by hand, killed when dropped.
struct Agents(Vec<std::process::Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn two_agents_racing_for_one_pin_dir_leave_one_running_and_the_other_refused() {
    let Some(mut lab) = lab(2) else { return };
    lab.start(1).unwrap();
    let from = lab.hosts[0].containers[0].ns.clone();
    let to = lab.hosts[1].containers[0].ip.clone();
    let dir = lab.hosts[0].log.parent().unwrap().to_path_buf();
    for round in ["fresh", "adopting"] {
        // Started together: on an empty pin dir, then on the datapath the first round's
        // winner left when it was killed.
        let logs: Vec<_> = (0..2)
            .map(|k| dir.join(format!("race-{round}-{k}.log")))
            .collect();
        let mut agents = Agents(Vec::new());
        for log in &logs {
            let out = std::fs::File::create(log).unwrap();
            let mut run = lab.netpath(0, &["run", "--config"]);
            run.arg(&lab.hosts[0].config)
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            agents.0.push(run.spawn().unwrap());
        }
        let read = |k: usize| std::fs::read_to_string(&logs[k]).unwrap_or_default();
        let until = Instant::now() + Duration::from_secs(30);
        let loser = loop {
            if let Some(k) = (0..2).find(|&k| agents.0[k].try_wait().unwrap().is_some()) {
                break k;
            }
            assert!(
                Instant::now() < until,
                "{round}: both still run:\n{}\n{}",
                read(0),
                read(1)
            );
            thread::sleep(Duration::from_millis(50));
        };
        let winner = 1 - loser;
        let status = agents.0[loser].wait().unwrap();
        assert!(!status.success(), "{round}: {}", read(loser));
        assert!(
            read(loser).contains("already manages") && !read(loser).contains("datapath at"),
            "{round}: {}",
            read(loser)
        );
        let marker = format!("datapath at {}", lab.hosts[0].pin_dir.display());
        while !read(winner).contains(&marker) {
            assert!(
                agents.0[winner].try_wait().unwrap().is_none() && Instant::now() < until,
                "{round}: {}",
                read(winner)
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            ping(&from, &to, 2, "0.1").unwrap().1,
            2,
            "{round}: {}",
            lab.diagnose(&[0, 1])
        );
        // The winner is killed (-9): the datapath stays for the next round.
        drop(agents);
        assert_eq!(
            ping(&from, &to, 2, "0.1").unwrap().1,
            2,
            "{round}: after the kill"
        );
    }
    lab.teardown().unwrap();
}
