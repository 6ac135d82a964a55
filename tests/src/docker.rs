//! Real Docker engines in the lab: Debian's dockerd 20.10, one per host namespace, each
//! with its own data root, exec root, socket and pidfile under the lab's directory,
//! `--bip` from the host's subnet and the vfs storage driver. No registry is reachable:
//! the images are made here (`np-busybox`: busybox-static; `np-probe`: the lab's probe
//! with the libraries it links). Teardown removes the containers, stops the daemons and
//! removes their directories, also when a test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Lab, ip, output, probe_bin, run};

/// A lab of two hosts without containers and an outside host, for dockerds; None (the
/// test is skipped, saying why) where labs or dockerd cannot run.
pub fn docker_lab() -> Option<Lab> {
    if !crate::can_run_lab() || !have_dockerd() {
        eprintln!("skipped: needs root and Debian's docker.io (cargo xtask setup)");
        return None;
    }
    Some(
        Lab::new(crate::Spec {
            hosts: 2,
            containers: 0,
            locked_down: true,
            outside: true,
        })
        .expect("build lab"),
    )
}

/// Waits up to `secs` for `done`, failing with `what` (see [`crate::wait_for`]).
pub fn wait_for(what: &str, secs: u64, done: impl FnMut() -> bool) {
    crate::wait_for(secs, done, || what.to_string());
}

/// Whether this machine can run dockerd (Debian's docker.io installed).
pub fn have_dockerd() -> bool {
    Path::new("/usr/sbin/dockerd").exists() && Path::new("/usr/bin/busybox").exists()
}

/// The subnets `Lab::network_configs` gives the lab's two hosts: each holds the host's
/// /24 (10.244.11.0/24, 10.244.12.0/24) and another for Docker's other networks.
pub const NETWORK_RANGES: [&str; 2] = ["10.244.10.0/23", "10.244.12.0/23"];

/// The socket of host `h`'s IPAM plugin (its agent makes it with `[docker]` and `[etcd]`).
pub fn plugin_socket(h: &crate::Host) -> PathBuf {
    PathBuf::from("/run/docker/plugins").join(format!("{}.sock", h.ns))
}

/// A dockerd the lab started.
pub struct Dockerd {
    pub host: usize,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub(crate) child: Option<std::process::Child>,
}

/// Docker's settings for a lab host (daemon.json): `userland-proxy` off, as where
/// performance matters, and anything the test adds.
#[derive(Clone, Debug)]
pub struct DockerOptions {
    pub userland_proxy: bool,
    /// Docker's iptables rules ("iptables": false when off).
    pub iptables: bool,
    /// Containers keep running while dockerd restarts.
    pub live_restore: bool,
    /// More daemon.json settings (an object), e.g. what `netpath subnet` prints: `bip`
    /// (in place of the host's gateway), `default-address-pools`, `mtu`.
    pub daemon: serde_json::Value,
}

impl Default for DockerOptions {
    fn default() -> DockerOptions {
        DockerOptions {
            userland_proxy: false,
            iptables: true,
            live_restore: false,
            daemon: serde_json::json!({}),
        }
    }
}

/// A root file system of `files` (host paths, copied under the same path) as a tar
/// stream on stdin of `docker import`.
fn import(
    lab: &Lab,
    i: usize,
    name: &str,
    files: &[PathBuf],
    links: &[(&str, &str)],
) -> Result<()> {
    let root = lab.dir.join(format!("rootfs-{name}"));
    if !root.exists() {
        for f in files {
            let to = root.join(f.strip_prefix("/").unwrap_or(f));
            fs::create_dir_all(to.parent().context("a file in /")?)?;
            fs::copy(f, &to).with_context(|| format!("copying {}", f.display()))?;
        }
        for (link, target) in links {
            let at = root.join(link);
            fs::create_dir_all(at.parent().context("a link in /")?)?;
            std::os::unix::fs::symlink(target, at)?;
        }
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut import = lab.docker(i, &["import", "-", name]);
    let out = import
        .stdin(tar.stdout.context("tar's output")?)
        .output()
        .context("docker import")?;
    if !out.status.success() {
        bail!(
            "docker import {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The shared libraries `bin` links (as ldd lists them), with the binary.
fn with_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(bin))?;
    let mut files = vec![bin.to_path_buf()];
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    Ok(files)
}

impl Lab {
    /// Starts a dockerd in host `i`'s namespace, its docker0 at the host's gateway
    /// address (`--bip`, unless `o.daemon` sets `bip`), and loads the lab's images into it. The host's br0 gives its
    /// address up to docker0. Returns the socket. Waits until the engine answers.
    pub fn dockerd(&mut self, i: usize, o: &DockerOptions) -> Result<PathBuf> {
        let (ns, name, gateway) = {
            let h = &self.hosts[i];
            (h.ns.clone(), h.name.clone(), h.gateway.clone())
        };
        let dir = self.dir.join(format!("{name}-docker"));
        fs::create_dir_all(&dir)?;
        let socket = dir.join("docker.sock");
        let config = dir.join("daemon.json");
        let mut daemon = serde_json::json!({"userland-proxy": o.userland_proxy,
            "iptables": o.iptables, "live-restore": o.live_restore});
        if let Some(more) = o.daemon.as_object() {
            for (k, v) in more {
                daemon[k] = v.clone();
            }
        }
        fs::write(&config, daemon.to_string())?;
        // dockerd refuses a setting given both in daemon.json and as a flag.
        let bip = match daemon.get("bip") {
            Some(_) => vec![],
            None => vec!["--bip".to_owned(), format!("{gateway}/24")],
        };
        run(ip(&ns, "addr flush dev br0"))?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        // nsenter --net, not ip netns exec: dockerd needs the machine's /sys (cgroups).
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(&bip)
            .args(["--storage-driver", "vfs"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.dockerds.push(Dockerd {
            host: i,
            dir: dir.clone(),
            socket: socket.clone(),
            child: Some(child),
        });
        let until = Instant::now() + Duration::from_secs(30);
        while !self
            .docker(i, &["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            if Instant::now() > until {
                bail!(
                    "dockerd on {name} did not answer within 30 s:\n{}",
                    fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let busybox = PathBuf::from("/usr/bin/busybox");
        let links = [
            ("bin/sh", "/usr/bin/busybox"),
            ("bin/sleep", "/usr/bin/busybox"),
            ("bin/ping", "/usr/bin/busybox"),
            ("bin/nc", "/usr/bin/busybox"),
            ("bin/ip", "/usr/bin/busybox"),
        ];
        import(
            self,
            i,
            "np-busybox",
            std::slice::from_ref(&busybox),
            &links,
        )?;
        // The probe with what it links, and busybox for ping and a shell.
        let mut files = with_libraries(&probe_bin())?;
        files.push(busybox);
        import(self, i, "np-probe", &files, &links)?;
        Ok(socket)
    }

    /// Makes host `i`'s config a Docker host's: `bridge = "docker0"` and `[docker]` with
    /// the socket of its engine and an IPAM plugin named after the host's namespace (the
    /// dockerds of the lab share Docker's plugin folder; the teardown removes its socket).
    /// For a config of `write_configs` or `write_fleet_configs`.
    pub fn use_docker(&self, i: usize) -> Result<()> {
        let d = self
            .dockerds
            .iter()
            .find(|d| d.host == i)
            .context("host has no dockerd")?;
        let path = &self.hosts[i].config;
        let text = fs::read_to_string(path)?.replace("bridge = \"br0\"", "bridge = \"docker0\"");
        fs::write(
            path,
            format!(
                "{text}\n[docker]\nsocket = {:?}\nplugin = {:?}\n",
                d.socket.display().to_string(),
                self.hosts[i].ns
            ),
        )?;
        Ok(())
    }

    /// Writes every host's config as a Docker host's (see [`Lab::use_docker`]), every
    /// other host a peer in `mode`, and netpath's masquerade on in place of Docker's
    /// MASQUERADE. Every host must run a dockerd.
    pub fn write_docker_configs(&self, mode: crate::PeerMode) -> Result<()> {
        self.write_configs(|_, _| mode)?;
        for i in 0..self.hosts.len() {
            self.set_host_option(i, "masquerade", "true")?;
            self.use_docker(i)?;
        }
        Ok(())
    }

    /// Host `i`'s engine as DOCKER_HOST names it (`unix://...`).
    pub fn docker_host(&self, i: usize) -> String {
        let d = self
            .dockerds
            .iter()
            .find(|d| d.host == i)
            .expect("host has no dockerd");
        format!("unix://{}", d.socket.display())
    }

    /// Writes every host's config with a subnet of two /24s (`NETWORK_RANGES`: h1's
    /// /24 and the one below it, h2's and the one above; peers' too), peers in `mode`;
    /// returns what `netpath subnet --network-len 27` says each host's daemon.json needs
    /// (docker0's network, the pools of its other networks in /27s). With `docker`, the
    /// configs are then Docker hosts' (see [`Lab::write_docker_configs`]). For two hosts.
    pub fn network_configs(
        &self,
        mode: crate::PeerMode,
        docker: bool,
    ) -> Result<Vec<serde_json::Value>> {
        self.write_configs(|_, _| mode)?;
        self.widen()?;
        let mut daemon = Vec::new();
        for i in 0..self.hosts.len() {
            let config = self.hosts[i].config.display().to_string();
            let args = [
                "subnet",
                "--config",
                &config,
                "--network-len",
                "27",
                "--json",
            ];
            let out = output(self.netpath(i, &args))?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            daemon.push(v["daemon_json"].clone());
        }
        if docker {
            self.write_docker_configs(mode)?;
            self.widen()?;
        }
        Ok(daemon)
    }

    /// The lab's /24s in every config (each host's own and its peers') made the /23s of
    /// `NETWORK_RANGES`.
    fn widen(&self) -> Result<()> {
        for h in &self.hosts {
            let mut t = fs::read_to_string(&h.config)?;
            for (from, to) in self.hosts.iter().zip(NETWORK_RANGES) {
                t = t.replace(&format!("\"{}\"", from.subnet), &format!("\"{to}\""));
            }
            fs::write(&h.config, t)?;
        }
        Ok(())
    }

    /// Starts a dockerd on every host with the daemon.json settings `daemon` (one per
    /// host, as [`Lab::network_configs`] returns them). Returns the options of the last.
    pub fn dockerds_with(
        &mut self,
        daemon: &[serde_json::Value],
        live_restore: bool,
    ) -> Result<DockerOptions> {
        let mut o = DockerOptions {
            live_restore,
            ..DockerOptions::default()
        };
        for (i, d) in daemon.iter().enumerate() {
            o.daemon = d.clone();
            self.dockerd(i, &o)?;
        }
        Ok(o)
    }

    /// The docker CLI against host `i`'s engine (more arguments may be appended).
    pub fn docker(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(self.docker_host(i)).args(args);
        c
    }

    /// The address of container `name` on host `i`'s network `net`.
    pub fn docker_addr(&self, i: usize, name: &str, net: &str) -> Result<String> {
        let f = format!("{{{{(index .NetworkSettings.Networks {net:?}).IPAddress}}}}");
        let addr = output(self.docker(i, &["inspect", "-f", &f, name]))?;
        Ok(addr.trim().to_owned())
    }

    /// Runs a detached container on host `i`: `docker run -d --name NAME ARGS...`;
    /// returns its address on docker0.
    pub fn docker_run(&self, i: usize, name: &str, args: &[&str]) -> Result<String> {
        output(self.docker(i, &["run", "-d", "--name", name]).args(args))?;
        let addr = output(self.docker(
            i,
            &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
        ))?;
        Ok(addr.trim().to_owned())
    }

    /// Runs `name` on host `i`: the probe's echo server on port 7000 (TCP and UDP), with
    /// Docker publishing `ports` (`-p` values, e.g. "8080:7000"); returns its address.
    pub fn docker_serve(&self, i: usize, name: &str, ports: &[&str]) -> Result<String> {
        let probe = probe_bin().display().to_string();
        let mut args: Vec<&str> = ports.iter().flat_map(|p| ["-p", p]).collect();
        args.extend(["np-probe", &probe, "serve", "7000", "3600"]);
        self.docker_run(i, name, &args)
    }

    /// Stops host `i`'s dockerd (SIGTERM; with `live_restore` its containers run on) and
    /// starts it again with the same settings.
    pub fn restart_dockerd(&mut self, i: usize, o: &DockerOptions) -> Result<()> {
        let k = self
            .dockerds
            .iter()
            .position(|d| d.host == i)
            .context("host has no dockerd")?;
        let mut d = self.dockerds.remove(k);
        if let Some(c) = d.child.as_mut() {
            terminate(c);
        }
        self.dockerd(i, o).map(|_| ())
    }

    /// Under traffic (one TCP connection from the outside host to host 1's port `port`,
    /// request/response for 12 s, which a cut fails; a ping every 100 ms from the
    /// container `peer` of host 2 to `to`), host 1's dockerd restarts with `o` and so
    /// does its agent; panics unless every request and every ping was answered.
    pub fn restart_under_traffic(&mut self, port: u16, to: &str, o: &DockerOptions) {
        let probe = probe_bin().display().to_string();
        let out = self.outside().ns.clone();
        let h1 = self.hosts[0].underlay.clone();
        let rr = {
            let cmd = format!("{probe} rr {h1} {port} 12");
            std::thread::spawn(move || crate::in_ns(&out, &cmd).output().unwrap())
        };
        let args = [
            "exec", "peer", "ping", "-c", "100", "-i", "0.1", "-W", "1", to,
        ];
        let ping = self
            .docker(1, &args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        self.restart_dockerd(0, o).unwrap();
        self.kill_agent(0);
        self.start(0).unwrap();
        let rr = rr.join().unwrap();
        assert!(rr.status.success(), "the connection was cut: {rr:?}");
        let ping = ping.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&ping.stdout);
        assert!(text.contains("100 packets received"), "{text}");
    }

    /// Removes every container and stops every dockerd the lab started; their
    /// directories go with the lab's.
    pub(crate) fn stop_dockerds(&mut self) {
        let all: Vec<usize> = self.dockerds.iter().map(|d| d.host).collect();
        for i in all {
            if let Ok(ids) = output(self.docker(i, &["ps", "-aq"])) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = self.docker(i, &["rm", "-f"]).args(&ids).output();
                }
            }
        }
        for mut d in self.dockerds.drain(..) {
            stop(&mut d);
        }
    }
}

/// Host `i`'s published ports of origin docker, as "proto/port -> addr:port".
pub fn docker_ports(lab: &Lab, i: usize) -> Vec<String> {
    let v = lab.netpath_json(i, &["publish", "list", "--json"]);
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["origin"] == "docker")
        .map(|p| {
            format!(
                "{}/{} -> {}",
                p["proto"].as_str().unwrap_or("?"),
                p["host_port"],
                p["container"].as_str().unwrap_or("?")
            )
        })
        .collect();
    out.sort();
    out
}

/// The probe's echo server on port 7000 in a container `name` of host `i` on network
/// `net` (`docker run --net`), with `more` docker-run arguments; returns its address
/// there.
pub fn serve_on(lab: &Lab, i: usize, name: &str, net: &str, more: &[&str]) -> String {
    let probe = probe_bin().display().to_string();
    let mut args = vec!["run", "-d", "--name", name, "--net", net];
    args.extend(more);
    args.extend(["np-probe", &probe, "serve", "7000", "3600"]);
    output(lab.docker(i, &args)).unwrap();
    lab.docker_addr(i, name, net).unwrap()
}

/// `docker exec NAME ping` from host `i`: how many of 3 came back.
pub fn ping_from(lab: &Lab, i: usize, name: &str, to: &str) -> u32 {
    let o = lab
        .docker(
            i,
            &["exec", name, "ping", "-c", "3", "-i", "0.2", "-W", "1", to],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    text.split(" packets received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// SIGTERM, up to 15 s for dockerd to stop its containers and containerd, then SIGKILL;
/// then what it mounted under its directory is unmounted.
fn stop(d: &mut Dockerd) {
    if let Some(mut c) = d.child.take() {
        terminate(&mut c);
    }
    kill_under(&d.dir);
    unmount_under(&d.dir);
}

/// SIGTERM to dockerd (nsenter execs it: the child is dockerd itself), up to 15 s for it
/// to stop, then SIGKILL.
fn terminate(c: &mut std::process::Child) {
    let _ = Command::new("kill").arg(c.id().to_string()).status();
    let until = Instant::now() + Duration::from_secs(15);
    while c.try_wait().ok().flatten().is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// SIGKILLs every process whose command line names a path under `dir` (containerd and
/// its shims that outlived dockerd).
pub(crate) fn kill_under(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) && pid != std::process::id() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Unmounts (lazily) every mount under `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&needle))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}
