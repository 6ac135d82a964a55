//! The lab: several hosts on one machine, built from network namespaces, as described in
//! shared/notes/design.md. Used by the integration tests, `cargo xtask demo` and the
//! benchmark.
//!
//! - a fabric namespace with a bridge standing for the LAN (underlay 198.18.0.0/24);
//! - each host a namespace with an uplink `eth0` into the fabric, a container bridge `br0`
//!   with its subnet 10.244.N.0/24, and containers attached by veth;
//! - optionally an "outside" host on the fabric.
//!
//! Names are unique per lab (`np<pid>x<seq>-...`), so labs can run in parallel; dropping
//! a [`Lab`] stops its agents, runs `netpath down` and deletes every namespace, also when
//! a test panics.

pub mod cmd;
pub mod docker;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
pub use cmd::{output, run};

static SEQ: AtomicU32 = AtomicU32::new(0);
static BPFFS: Mutex<()> = Mutex::new(());

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests: returns false (after saying why) when the lab cannot be built here.
pub fn can_run_lab() -> bool {
    if !is_root() {
        eprintln!("SKIP: needs root (network namespaces, BPF)");
        return false;
    }
    true
}

/// The netpath binary: `NETPATH_BIN` (set by `cargo xtask test`), else target/debug.
pub fn netpath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPATH_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netpath")
}

/// The upgrade tests' second build of netpath (this tree with `--features layout-test`:
/// a map layout changed on purpose): `NETPATH_LAYOUT_TEST_BIN` (set by `cargo xtask
/// test`), else target/debug/netpath-layout-test.
pub fn netpath_layout_test_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETPATH_LAYOUT_TEST_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netpath-layout-test")
}

/// The lab's traffic tool: `NP_PROBE_BIN` (set by `cargo xtask`), else target/debug.
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NP_PROBE_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/np-probe")
}

/// Mounts bpffs on /sys/fs/bpf unless it is there (a machine just booted has none: there
/// /sys/fs/bpf is a plain sysfs directory where mkdir fails). Every lab calls it when it is
/// built, before anything touches /sys/fs/bpf and before agents start in parallel (two
/// agents racing to mount it would stack two filesystems and hide each other's pins).
pub fn ensure_bpffs() -> Result<()> {
    let _g = BPFFS.lock().unwrap_or_else(|e| e.into_inner());
    if !bpffs_mounted()? {
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// The capabilities the service unit (dist/netpath.service) bounds the agent to: every
/// lab agent runs with exactly these.
pub fn agent_caps() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/netpath.service");
    let unit = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{}: no CapabilityBoundingSet=", path.display()))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Whether bpffs is mounted on /sys/fs/bpf in this process's mount namespace.
pub fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    Direct,
    Vxlan,
}

impl PeerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Direct => "direct",
            PeerMode::Vxlan => "vxlan",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub hosts: usize,
    pub containers: usize,
    /// iptables FORWARD policy DROP and empty nat POSTROUTING and PREROUTING on every
    /// host: the incident netpath must survive (they must not matter).
    pub locked_down: bool,
    /// An "outside" host on the fabric (see [`Outside`]).
    pub outside: bool,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            hosts: 2,
            containers: 1,
            locked_down: true,
            outside: false,
        }
    }
}

#[derive(Clone)]
pub struct Container {
    pub ns: String,
    pub ip: String,
}

pub struct Host {
    /// 1-based index; the underlay address is 198.18.0.(10+idx), the subnet 10.244.(10+idx).0/24.
    pub idx: usize,
    pub name: String,
    pub ns: String,
    pub underlay: String,
    pub subnet: String,
    pub gateway: String,
    pub containers: Vec<Container>,
    pub pin_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    agent: Option<Child>,
}

/// A host on the fabric that is not part of the cluster (the internet, a client): it
/// knows the hosts' underlay addresses only, no route to any container subnet.
pub struct Outside {
    pub ns: String,
    pub addr: String,
}

impl Lab {
    /// A lab of `hosts` hosts with `containers` containers each, locked down (FORWARD
    /// DROP, no NAT rules), no outside host; None (the test is skipped) where labs cannot
    /// run.
    pub fn hosts(hosts: usize, containers: usize) -> Option<Lab> {
        if !can_run_lab() {
            return None;
        }
        Some(
            Lab::new(Spec {
                hosts,
                containers,
                locked_down: true,
                outside: false,
            })
            .expect("build lab"),
        )
    }
}

/// Underlay address of the outside host.
pub const OUTSIDE_ADDR: &str = "198.18.0.250";

pub struct Lab {
    pub id: String,
    pub fabric: String,
    pub hosts: Vec<Host>,
    pub outside: Option<Outside>,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// The etcd members `etcd()` started: (namespace, process).
    etcd_members: Vec<(String, Option<Child>)>,
    /// The Docker engines `dockerd()` started.
    dockerds: Vec<docker::Dockerd>,
    /// How long `start` waits for an agent to attach (20 s; a bench of thousands of
    /// interfaces may need more).
    pub attach_secs: u64,
}

impl Lab {
    /// Builds the topology. Every namespace created is recorded first, so a failure half
    /// way still cleans up on drop.
    pub fn new(spec: Spec) -> Result<Lab> {
        ensure_bpffs().context("mounting bpffs on /sys/fs/bpf for the lab's pin dirs")?;
        let id = format!(
            "np{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            fabric: format!("{id}-fab"),
            id: id.clone(),
            hosts: Vec::new(),
            outside: None,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            etcd_members: Vec::new(),
            dockerds: Vec::new(),
            attach_secs: 20,
        };
        lab.add_ns(&lab.fabric.clone())?;
        let fab = lab.fabric.clone();
        run(ip(&fab, "link add fab type bridge"))?;
        run(ip(&fab, "link set fab up"))?;
        for idx in 1..=spec.hosts {
            lab.add_host(idx, &spec)?;
        }
        if spec.outside {
            let ns = format!("{id}-out");
            lab.on_fabric(&ns, "uo", OUTSIDE_ADDR)?;
            lab.outside = Some(Outside {
                ns,
                addr: OUTSIDE_ADDR.to_owned(),
            });
        }
        Ok(lab)
    }

    /// The outside host (the lab must have been built with `Spec::outside`).
    pub fn outside(&self) -> &Outside {
        self.outside
            .as_ref()
            .expect("lab built without an outside host")
    }

    /// A namespace of the lab's own, `<lab id>-<name>`, with its loopback up; the
    /// teardown removes it. Returns its name.
    pub fn namespace(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.id);
        self.add_ns(&ns)?;
        Ok(ns)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.namespaces.push(ns.to_owned());
        run(ip(ns, "link set lo up"))?;
        Ok(())
    }

    /// Makes namespace `ns` a machine on the fabric: its `eth0` (a veth whose other end,
    /// `port`, is on the fabric's bridge) with `addr`/24, up.
    fn on_fabric(&mut self, ns: &str, port: &str, addr: &str) -> Result<()> {
        self.add_ns(ns)?;
        let fab = &self.fabric;
        run(ip(
            fab,
            &format!("link add {port} type veth peer name eth0 netns {ns}"),
        ))?;
        run(ip(fab, &format!("link set {port} master fab up")))?;
        run(ip(ns, &format!("addr add {addr}/24 dev eth0")))?;
        run(ip(ns, "link set eth0 up"))
    }

    fn add_host(&mut self, idx: usize, spec: &Spec) -> Result<()> {
        let name = format!("h{idx}");
        let ns = format!("{}-{name}", self.id);
        let underlay = format!("198.18.0.{}", 10 + idx);
        let net = 10 + idx;
        let subnet = format!("10.244.{net}.0/24");
        let gateway = format!("10.244.{net}.1");
        self.on_fabric(&ns, &format!("u{idx}"), &underlay)?;
        run(ip(&ns, "link add br0 type bridge"))?;
        run(ip(&ns, &format!("addr add {gateway}/24 dev br0")))?;
        run(ip(&ns, "link set br0 up"))?;
        sysctl(&ns, "net.ipv4.ip_forward", "0")?;
        if spec.locked_down {
            run(in_ns(&ns, "iptables -P FORWARD DROP"))?;
            run(in_ns(&ns, "iptables -t nat -F POSTROUTING"))?;
            run(in_ns(&ns, "iptables -t nat -F PREROUTING"))?;
            // br_netfilter (where loaded) would hand bridged frames (container to
            // container on this host) to the FORWARD chain too; netpath's veth programs
            // decide those.
            if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
                sysctl(&ns, "net.bridge.bridge-nf-call-iptables", "0")?;
            }
        }
        self.hosts.push(Host {
            idx,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{}-{name}", self.id)),
            config: self.dir.join(format!("{name}.toml")),
            log: self.dir.join(format!("{name}.log")),
            name,
            ns,
            underlay,
            subnet,
            gateway,
            containers: Vec::new(),
            agent: None,
        });
        let i = self.hosts.len() - 1;
        for _ in 0..spec.containers {
            self.add_container(i)?;
        }
        Ok(())
    }

    /// Adds a container to host `i` (also while its agent runs): a namespace attached to
    /// the host's bridge by a veth, with the next address of the host's subnet.
    pub fn add_container(&mut self, i: usize) -> Result<Container> {
        let h = &self.hosts[i];
        let (ns, name, gateway) = (h.ns.clone(), h.name.clone(), h.gateway.clone());
        let c = h.containers.len() + 1;
        let (network, len) = h
            .subnet
            .split_once('/')
            .context("subnet without a length")?;
        let (network, len): (std::net::Ipv4Addr, String) = (network.parse()?, len.to_owned());
        let cns = format!("{}-{name}c{c}", self.id);
        self.add_ns(&cns)?;
        let cip = std::net::Ipv4Addr::from(u32::from(network) + 1 + c as u32).to_string();
        run(ip(
            &ns,
            &format!("link add v{c} type veth peer name eth0 netns {cns}"),
        ))?;
        run(ip(&ns, &format!("link set v{c} master br0 up")))?;
        run(ip(&cns, &format!("addr add {cip}/{len} dev eth0")))?;
        run(ip(&cns, "link set eth0 up"))?;
        run(ip(&cns, &format!("route add default via {gateway}")))?;
        let container = Container { ns: cns, ip: cip };
        self.hosts[i].containers.push(container.clone());
        Ok(container)
    }

    /// Starts an etcd cluster of `members` members, each in its own namespace on the
    /// fabric (underlay 198.18.0.2, .3, ...; client port 2379, peer port 2380), its data in
    /// the lab's directory; waits until it answers. Returns the client endpoints. The
    /// members are the lab's children: teardown stops them and removes their data.
    pub fn etcd(&mut self, members: usize) -> Result<Vec<String>> {
        self.etcd_with(members, false)
    }

    /// Makes, in the lab's directory, a CA (`ca.pem`), a server certificate for each of
    /// `members` members (`server{k}.pem`, `server{k}-key.pem`, for its address), a client
    /// certificate (`client.pem`, `client-key.pem`) and a second, unrelated CA
    /// (`other-ca.pem`). Returns the directory.
    pub fn etcd_certs(&self, members: usize) -> Result<PathBuf> {
        let d = self.dir.clone();
        let ssl = |args: &str| -> Result<()> {
            run(Command::new("openssl")
                .current_dir(&d)
                .args(args.split_whitespace()))
        };
        for ca in ["ca", "other-ca"] {
            ssl(&format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=netpath-test-{ca} -keyout {ca}-key.pem -out {ca}.pem"
            ))?;
        }
        let sign = |name: &str, san: &str, usage: &str| -> Result<()> {
            ssl(&format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={name} -keyout {name}-key.pem -out {name}.csr"
            ))?;
            fs::write(
                d.join(format!("{name}.ext")),
                format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
            )?;
            ssl(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem"
            ))
        };
        for k in 0..members {
            sign(
                &format!("server{k}"),
                &format!("subjectAltName=IP:198.18.0.{}\n", 2 + k),
                "serverAuth",
            )?;
        }
        sign("client", "", "clientAuth")?;
        Ok(d)
    }

    /// As [`Lab::etcd`]; with `tls`, the members serve clients over https with the
    /// certificates of [`Lab::etcd_certs`] and require a client certificate.
    pub fn etcd_with(&mut self, members: usize, tls: bool) -> Result<Vec<String>> {
        let certs = if tls {
            Some(self.etcd_certs(members)?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let addrs: Vec<String> = (0..members)
            .map(|k| format!("198.18.0.{}", 2 + k))
            .collect();
        let cluster = addrs
            .iter()
            .enumerate()
            .map(|(k, a)| format!("e{k}=http://{a}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        for (k, a) in addrs.iter().enumerate() {
            let ns = format!("{}-etcd{k}", self.id);
            self.on_fabric(&ns, &format!("ue{k}"), a)?;
            let data = self.dir.join(format!("etcd{k}"));
            let log = fs::File::create(self.dir.join(format!("etcd{k}.log")))?;
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns, "etcd"])
                .args(["--name", &format!("e{k}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &format!("{scheme}://{a}:2379")])
                .args(["--advertise-client-urls", &format!("{scheme}://{a}:2379")]);
            if let Some(c) = &certs {
                cmd.arg("--cert-file")
                    .arg(c.join(format!("server{k}.pem")))
                    .arg("--key-file")
                    .arg(c.join(format!("server{k}-key.pem")))
                    .arg("--trusted-ca-file")
                    .arg(c.join("ca.pem"))
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--listen-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-token", &self.id])
                .args(["--initial-cluster-state", "new"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)")?;
            self.etcd_members.push((ns, Some(child)));
        }
        let endpoints: Vec<String> = addrs
            .iter()
            .map(|a| format!("{scheme}://{a}:2379"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut check = Command::new("ip");
            check
                .args(["netns", "exec", &format!("{}-etcd0", self.id), "etcdctl"])
                .args(["--endpoints", &endpoints.join(","), "endpoint", "health"])
                .env("ETCDCTL_API", "3");
            if let Some(c) = &certs {
                check
                    .arg("--cacert")
                    .arg(c.join("ca.pem"))
                    .arg("--cert")
                    .arg(c.join("client.pem"))
                    .arg("--key")
                    .arg(c.join("client-key.pem"));
            }
            let ok = check.output().map(|o| o.status.success()).unwrap_or(false);
            if ok {
                return Ok(endpoints);
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.join("etcd0.log")).unwrap_or_default();
                bail!("etcd did not become healthy within 20 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl ARGS` against the lab's plain-http members, from the first member's
    /// namespace; its output.
    pub fn etcdctl(&self, args: &str) -> Result<String> {
        let (ns, _) = self.etcd_members.first().context("the lab has no etcd")?;
        let endpoints: Vec<String> = (0..self.etcd_members.len())
            .map(|k| format!("http://198.18.0.{}:2379", 2 + k))
            .collect();
        output(
            Command::new("ip")
                .args(["netns", "exec", ns, "etcdctl", "--endpoints"])
                .arg(endpoints.join(","))
                .args(args.split_whitespace())
                .env("ETCDCTL_API", "3"),
        )
    }

    /// The namespace of etcd's first member (its client URL is http://198.18.0.2:2379).
    /// The pids of the lab's etcd members that run.
    pub fn etcd_pids(&self) -> Vec<u32> {
        self.etcd_members
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(|c| c.id()))
            .collect()
    }

    pub fn etcd_ns(&self) -> Result<String> {
        Ok(self
            .etcd_members
            .first()
            .context("the lab has no etcd")?
            .0
            .clone())
    }

    /// Stops etcd member `k` (SIGKILL): etcd is away for the hosts if it was the only one.
    pub fn kill_etcd(&mut self, k: usize) {
        if let Some(mut c) = self.etcd_members.get_mut(k).and_then(|m| m.1.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes each host's config for a fleet: its own [host] and `[etcd]` with
    /// `endpoints`, no peers (they come from etcd). `lease_ttl` in seconds.
    pub fn write_fleet_configs(&self, endpoints: &[String], lease_ttl: u64) -> Result<()> {
        let list = endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        for h in &self.hosts {
            let t = format!(
                "[host]\nname = \"{}\"\nuplink = \"eth0\"\nbridge = \"br0\"\nsubnet = \"{}\"\nvni = 42\n\n[etcd]\nendpoints = [{list}]\nlease_ttl = {lease_ttl}\n",
                h.name, h.subnet
            );
            fs::write(&h.config, t)?;
        }
        Ok(())
    }

    /// Makes host `i`'s config lease its subnet from etcd: no `[host].subnet`, the lease
    /// remembered in the lab's directory (`h{idx}.subnet.env`). For a config of
    /// [`Lab::write_fleet_configs`].
    pub fn lease_subnet(&self, i: usize) -> Result<PathBuf> {
        let h = &self.hosts[i];
        let remembered = self.dir.join(format!("{}.subnet.env", h.name));
        let text = fs::read_to_string(&h.config)?;
        let mut out: String = text
            .lines()
            .filter(|l| !l.starts_with("subnet ="))
            .map(|l| format!("{l}\n"))
            .collect();
        // [etcd] is the last table of a fleet config.
        out += &format!("subnet_file = {:?}\n", remembered.display().to_string());
        fs::write(&h.config, out)?;
        Ok(remembered)
    }

    /// Moves host `i`, before it has containers, to `subnet` (a /24): its bridge gets the
    /// subnet's first address, as dockerd does with `bip`; later containers are numbered in it.
    pub fn move_subnet(&mut self, i: usize, subnet: &str) -> Result<()> {
        let h = &mut self.hosts[i];
        anyhow::ensure!(h.containers.is_empty(), "host {} has containers", h.name);
        let network: std::net::Ipv4Addr = subnet
            .split_once('/')
            .context("subnet without a length")?
            .0
            .parse()?;
        let gateway = std::net::Ipv4Addr::from(u32::from(network) + 1).to_string();
        run(ip(&h.ns, "addr flush dev br0"))?;
        run(ip(&h.ns, &format!("addr add {gateway}/24 dev br0")))?;
        h.subnet = subnet.to_owned();
        h.gateway = gateway;
        Ok(())
    }

    /// Writes each host's config with every other host as a peer in `mode(host, peer)`.
    pub fn write_configs(&self, mode: impl Fn(&Host, &Host) -> PeerMode) -> Result<()> {
        for h in &self.hosts {
            let mut t = format!(
                "[host]\nname = \"{}\"\nuplink = \"eth0\"\nbridge = \"br0\"\nsubnet = \"{}\"\nvni = 42\n",
                h.name, h.subnet
            );
            for p in self.hosts.iter().filter(|p| p.idx != h.idx) {
                t += &format!(
                    "\n[[peer]]\nname = \"{}\"\nsubnet = \"{}\"\nunderlay = \"{}\"\nmode = \"{}\"\n",
                    p.name,
                    p.subnet,
                    p.underlay,
                    mode(h, p).as_str()
                );
            }
            fs::write(&h.config, t)?;
        }
        Ok(())
    }

    /// Appends `text` (TOML tables: `[[publish]]`, `[conntrack]`, ...) to host `i`'s config.
    pub fn append_config(&self, i: usize, text: &str) -> Result<()> {
        let path = &self.hosts[i].config;
        let mut t = fs::read_to_string(path)?;
        t.push('\n');
        t.push_str(text);
        fs::write(path, t)?;
        Ok(())
    }

    /// Sets `key = value` (value as TOML, e.g. `"\"generic\""`) in the `[host]` table of
    /// host `i`'s config, replacing an earlier setting of that key.
    pub fn set_host_option(&self, i: usize, key: &str, value: &str) -> Result<()> {
        let path = &self.hosts[i].config;
        let text = fs::read_to_string(path)?;
        let prefix = format!("{key} =");
        let mut out = String::new();
        for line in text.lines().filter(|l| !l.starts_with(&prefix)) {
            out += line;
            out += "\n";
            if line == "[host]" {
                out += &format!("{key} = {value}\n");
            }
        }
        fs::write(path, out)?;
        Ok(())
    }

    /// Starts netpath on every host and waits until each has attached.
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.hosts.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// Starts the agent of host `i` (index into `hosts`) and waits for it to attach.
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.start_bin(i, &netpath_bin(), &[])
    }

    /// Starts host `i`'s agent from `bin` (another build of netpath: the upgrade tests),
    /// with `env` added to its environment, and waits for it to attach.
    pub fn start_bin(&mut self, i: usize, bin: &Path, env: &[(&str, &str)]) -> Result<()> {
        self.start_with(i, bin, |c| {
            c.envs(env.iter().copied());
        })
    }

    /// Starts host `i`'s agent from `bin`, its command first given to `set` (a test's
    /// environment, or a cgroup to start in), and waits for it to attach.
    pub fn start_with(
        &mut self,
        i: usize,
        bin: &Path,
        set: impl FnOnce(&mut Command),
    ) -> Result<()> {
        let h = &mut self.hosts[i];
        let marker = format!("datapath at {}", h.pin_dir.display());
        let before = fs::read_to_string(&h.log)
            .unwrap_or_default()
            .matches(&marker)
            .count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)?;
        let config = h.config.clone();
        let mut cmd = self.netpath_bin(i, bin, &["run", "--config"]);
        cmd.arg(config);
        set(&mut cmd);
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting netpath")?;
        let secs = self.attach_secs;
        let h = &mut self.hosts[i];
        h.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = fs::read_to_string(&h.log).unwrap_or_default();
            if text.matches(&marker).count() > before {
                return Ok(());
            }
            if let Some(status) = h.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("netpath on {} exited ({status}):\n{text}", h.name);
            }
            if Instant::now() > deadline {
                bail!(
                    "netpath on {} did not attach within {secs} s:\n{text}",
                    h.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of host `i`'s agent, if it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].agent.as_ref().map(|c| c.id())
    }

    /// Stops the agent of host `i` as an operator would (SIGTERM), and waits for it.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].agent.take() {
            let _ = nix_kill(c.id(), libc::SIGTERM);
            let _ = c.wait();
        }
    }

    /// SIGKILLs the agent of host `i`: the datapath must stay.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `netpath --pin-dir <host's> ARGS` inside host `i`'s network namespace (nsenter
    /// keeps our bpffs; more arguments may be appended).
    pub fn netpath(&self, i: usize, args: &[&str]) -> Command {
        self.netpath_bin(i, &netpath_bin(), args)
    }

    /// As [`Lab::netpath`], with the netpath binary `bin`. An agent (`run`) is bounded to
    /// the service unit's capabilities ([`agent_caps`]), as the unit bounds it.
    pub fn netpath_bin(&self, i: usize, bin: &Path, args: &[&str]) -> Command {
        let caps = (args.first() == Some(&"run")).then(agent_caps);
        self.netpath_with_caps(i, bin, caps.as_deref(), args)
    }

    /// `netpath ARGS` on host `i` from `bin`; with `caps` (names as in the unit, `CAP_BPF`)
    /// setpriv clears the inheritable and ambient sets and keeps only `caps` in the
    /// bounding set, so netpath, root, runs with exactly them.
    pub fn netpath_with_caps(
        &self,
        i: usize,
        bin: &Path,
        caps: Option<&[String]>,
        args: &[&str],
    ) -> Command {
        let h = &self.hosts[i];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", h.ns));
        if let Some(caps) = caps {
            let bounding: String = caps
                .iter()
                .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
                .collect();
            c.args(["setpriv", "--inh-caps=-all", "--ambient-caps=-all"])
                .arg(format!("--bounding-set=-all{bounding}"))
                .arg("--");
        }
        c.arg(bin).arg("--pin-dir").arg(&h.pin_dir).args(args);
        c
    }

    /// `netpath ARGS` (a `--json` command) on host `i`, parsed; panics with the output.
    pub fn netpath_json(&self, i: usize, args: &[&str]) -> serde_json::Value {
        let out = output(self.netpath(i, args)).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// What a failed assertion about traffic should print: for each of `hosts`, the
    /// counters that are not zero, the peers, the endpoints and the end of the agent's log.
    pub fn diagnose(&self, hosts: &[usize]) -> String {
        let mut out = String::new();
        for &i in hosts {
            let h = &self.hosts[i];
            let text = |args: &[&str]| {
                self.netpath(i, args).output().map_or_else(
                    |e| e.to_string(),
                    |o| String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            };
            let counters: String = text(&["dump", "counters"])
                .lines()
                .filter(|l| l.split_whitespace().nth(2).is_none_or(|n| n != "0"))
                .map(|l| format!("{l}\n"))
                .collect();
            let log = fs::read_to_string(&h.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!(
                "--- {} counters:\n{counters}--- {} peers:\n{}--- {} endpoints:\n{}--- {} log (end):\n{}\n",
                h.name,
                h.name,
                text(&["dump", "peers"]),
                h.name,
                text(&["dump", "endpoints"]),
                h.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }

    /// The endpoints host `i`'s datapath delivers to straight: address -> veth ifindex.
    pub fn endpoints(&self, i: usize) -> std::collections::BTreeMap<String, u64> {
        self.netpath_json(i, &["dump", "endpoints", "--json"])
            .as_array()
            .expect("an array of endpoints")
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap_or("").to_owned(),
                    e["ifindex"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Has container `c` of host `i` send one ping to its gateway (the ARP for it is how
    /// the host learns a container) and waits up to 5 s for the agent to list it as an
    /// endpoint.
    pub fn learn(&self, i: usize, c: &Container) -> Result<()> {
        let _ = ping(&c.ns, &self.hosts[i].gateway, 1, "0.2");
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !self.endpoints(i).contains_key(&c.ip) {
            if std::time::Instant::now() > until {
                bail!("host {i} did not learn the endpoint {}", c.ip);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Packets counted under `reason` on host `i`.
    pub fn counter(&self, i: usize, reason: &str) -> u64 {
        self.netpath_json(i, &["dump", "counters", "--json"])
            .as_array()
            .expect("an array of counters")
            .iter()
            .find(|r| r["reason"] == reason)
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or_else(|| panic!("no counter {reason}"))
    }

    /// Plain kernel routing instead of netpath (the comparison baseline): ip_forward on,
    /// FORWARD accepted, a static route to every peer subnet via its host.
    pub fn kernel_routing(&self) -> Result<()> {
        for h in &self.hosts {
            sysctl(&h.ns, "net.ipv4.ip_forward", "1")?;
            run(in_ns(&h.ns, "iptables -P FORWARD ACCEPT"))?;
            for p in self.hosts.iter().filter(|p| p.idx != h.idx) {
                run(ip(
                    &h.ns,
                    &format!("route add {} via {}", p.subnet, p.underlay),
                ))?;
            }
        }
        Ok(())
    }

    /// The iptables path (the classic "routing + iptables" recipe, with Docker's chains):
    /// on every host ip_forward, a route to each other host's subnet via its underlay
    /// address, Docker's filter chains for `br0` (DOCKER-USER, the two isolation stages,
    /// conntrack RELATED,ESTABLISHED, DOCKER), an ACCEPT for each peer subnet into the
    /// bridge (flannel's), and nat POSTROUTING MASQUERADE for the subnet with a RETURN
    /// for the container range first: conntrack sees every packet. FORWARD's policy stays
    /// DROP.
    pub fn iptables_path(&self) -> Result<()> {
        for h in &self.hosts {
            sysctl(&h.ns, "net.ipv4.ip_forward", "1")?;
            let mut rules = String::from(
                "*filter\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n\
                 :DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
                 -A FORWARD -j DOCKER-USER\n\
                 -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
                 -A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                 -A FORWARD -o br0 -j DOCKER\n\
                 -A FORWARD -i br0 ! -o br0 -j ACCEPT\n\
                 -A FORWARD -i br0 -o br0 -j ACCEPT\n",
            );
            for p in self.hosts.iter().filter(|p| p.idx != h.idx) {
                rules += &format!("-A FORWARD -s {} -o br0 -j ACCEPT\n", p.subnet);
                run(ip(
                    &h.ns,
                    &format!("route add {} via {}", p.subnet, p.underlay),
                ))?;
            }
            rules += "-A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j DOCKER-ISOLATION-STAGE-2\n\
                      -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
                      -A DOCKER-ISOLATION-STAGE-2 -o br0 -j DROP\n\
                      -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n\
                      -A DOCKER-USER -j RETURN\nCOMMIT\n";
            rules += &format!(
                "*nat\n-A POSTROUTING -s {} -d 10.244.0.0/16 -j RETURN\n\
                 -A POSTROUTING -s {} ! -o br0 -j MASQUERADE\nCOMMIT\n",
                h.subnet, h.subnet
            );
            iptables_restore(&h.ns, &rules)?;
        }
        Ok(())
    }

    /// Puts `n` FORWARD rules that match nothing the lab sends (each a different source
    /// /32 and port) in DOCKER-USER on every host, where operators put theirs: every
    /// forwarded packet walks them. Replaces the previous ones.
    pub fn iptables_extra_rules(&self, n: usize) -> Result<()> {
        let mut rules = String::from("*filter\n-F DOCKER-USER\n");
        for (from, port) in unmatched(n) {
            rules += &format!(
                "-A DOCKER-USER -s {from}/32 -d 10.244.192.0/19 -p tcp --dport {port} -j DROP\n"
            );
        }
        rules += "-A DOCKER-USER -j RETURN\nCOMMIT\n";
        for h in &self.hosts {
            iptables_restore(&h.ns, &rules)?;
        }
        Ok(())
    }

    /// The ceiling: two container namespaces joined by one veth (10.244.11.2 and .3),
    /// nothing in between.
    pub fn veth_pair(&mut self) -> Result<(Container, Container)> {
        let a = format!("{}-c1", self.id);
        let b = format!("{}-c2", self.id);
        self.add_ns(&a)?;
        self.add_ns(&b)?;
        run(ip(
            &a,
            &format!("link add eth0 type veth peer name eth0 netns {b}"),
        ))?;
        let mut pair = Vec::new();
        for (ns, addr) in [(a, "10.244.11.2"), (b, "10.244.11.3")] {
            run(ip(&ns, &format!("addr add {addr}/24 dev eth0")))?;
            run(ip(&ns, "link set eth0 up"))?;
            pair.push(Container {
                ns,
                ip: addr.into(),
            });
        }
        let b = pair.pop().expect("two");
        Ok((pair.pop().expect("two"), b))
    }

    /// Starts a background command inside `ns` (a server); killed at teardown.
    pub fn spawn_in(&mut self, ns: &str, program: &Path, args: &[&str]) -> Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} in {ns}", program.display()))?;
        self.children.push(child);
        Ok(())
    }

    /// Makes host `i` a plain Linux VXLAN host (what flannel's vxlan backend and Docker's
    /// overlay build; no netpath): ip_forward on, a vxlan device `vxlan0` (VNI 42, port
    /// 4789, learning off) whose MAC is 02:4e:<underlay> (netpath's default VTEP MAC, so
    /// netpath peers need no `vtep_mac`), and for every other host a route to its subnet
    /// through vxlan0, a permanent neighbour entry and a static FDB entry.
    pub fn kernel_vxlan(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let mac = |u: &str| -> String {
            let o: Vec<u8> = u.split('.').map(|x| x.parse().unwrap_or(0)).collect();
            format!("02:4e:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
        };
        sysctl(&h.ns, "net.ipv4.ip_forward", "1")?;
        run(in_ns(&h.ns, "iptables -P FORWARD ACCEPT"))?;
        run(ip(
            &h.ns,
            &format!(
                "link add vxlan0 address {} type vxlan id 42 dstport 4789 local {} dev eth0 nolearning",
                mac(&h.underlay),
                h.underlay
            ),
        ))?;
        run(ip(
            &h.ns,
            &format!("addr add {}/32 dev vxlan0", h.subnet.replace("/24", "")),
        ))?;
        run(ip(&h.ns, "link set vxlan0 up"))?;
        for p in self.hosts.iter().filter(|p| p.idx != h.idx) {
            let pnet = p.subnet.replace("/24", "");
            let pmac = mac(&p.underlay);
            run(ip(
                &h.ns,
                &format!("neigh add {pnet} lladdr {pmac} dev vxlan0 nud permanent"),
            ))?;
            run(Command::new("bridge").args([
                "-n",
                &h.ns,
                "fdb",
                "append",
                &pmac,
                "dev",
                "vxlan0",
                "dst",
                &p.underlay,
            ]))?;
            run(ip(
                &h.ns,
                &format!("route add {} via {pnet} dev vxlan0 onlink", p.subnet),
            ))?;
        }
        Ok(())
    }

    /// Turns checksum offload off on every veth of the lab (both ends, every namespace,
    /// containers added so far included): senders then fill every L4 checksum themselves
    /// and receivers verify it (the skb is CHECKSUM_NONE, not CHECKSUM_PARTIAL), so a
    /// rewrite that gets a checksum wrong shows as lost packets and in
    /// [`Lab::checksum_errors`]. TSO goes with it (it needs the offload).
    pub fn checksum_offload_off(&self) -> Result<()> {
        for ns in &self.namespaces {
            let links = output(ip(ns, "-o link show type veth"))?;
            for dev in links.lines().filter_map(|l| {
                let name = l.split(": ").nth(1)?;
                Some(name.split('@').next().unwrap_or(name).to_owned())
            }) {
                run(in_ns(ns, &format!("ethtool -K {dev} tx off")))?;
                let shown = output(in_ns(ns, &format!("ethtool -k {dev}")))?;
                if !shown.contains("tx-checksumming: off") {
                    bail!("{ns} {dev}: tx checksumming still on:\n{shown}");
                }
            }
        }
        Ok(())
    }

    /// Every namespace of the lab whose stack counted a packet with a bad TCP, UDP or
    /// ICMP checksum since it was made: (namespace, the counters' line).
    pub fn checksum_errors(&self) -> Result<Vec<(String, String)>> {
        let mut bad = Vec::new();
        for ns in &self.namespaces {
            let snmp = output(in_ns(ns, "cat /proc/net/snmp"))?;
            let errors = csum_errors(&snmp)?;
            if errors.iter().any(|(_, n)| *n > 0) {
                bad.push((ns.clone(), format!("{errors:?}")));
            }
        }
        Ok(bad)
    }

    /// Tears down; also what Drop does. Collects every error and reports them together.
    pub fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        self.stop_dockerds();
        for mut c in self
            .children
            .drain(..)
            .chain(self.etcd_members.drain(..).filter_map(|m| m.1))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.hosts.len() {
            self.kill_agent(i);
            let h = &self.hosts[i];
            // The agent's IPAM plugin socket (see Lab::use_docker), left for its next start.
            let _ = fs::remove_file(docker::plugin_socket(h));
            if h.pin_dir.exists()
                && let Err(e) = netpath_down(&h.pin_dir)
            {
                errors.push(format!("netpath down on {}: {e:#}", h.name));
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns])) {
                errors.push(format!("{e:#}"));
            }
        }
        // What a test mounted in the lab's directory (a full tmpfs, say) goes with it.
        docker::unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("lab teardown: {}", errors.join("; "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// The InCsumErrors counters of /proc/net/snmp's Icmp, Tcp and Udp lines, by protocol.
fn csum_errors(snmp: &str) -> Result<Vec<(String, u64)>> {
    let lines: Vec<&str> = snmp.lines().collect();
    let mut out = Vec::new();
    for proto in ["Icmp", "Tcp", "Udp"] {
        let prefix = format!("{proto}:");
        let mut rows = lines.iter().filter(|l| l.starts_with(&prefix));
        let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
            bail!("/proc/net/snmp has no {proto} lines");
        };
        let at = names
            .split_whitespace()
            .position(|n| n == "InCsumErrors")
            .with_context(|| format!("/proc/net/snmp: no {proto} InCsumErrors"))?;
        let n = values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/net/snmp: {proto} InCsumErrors unreadable"))?;
        out.push((proto.to_owned(), n));
    }
    Ok(out)
}

/// A memory figure of process `pid` from /proc/PID/status (`field`: "VmRSS:", "VmHWM:"),
/// in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Polls `done` every 100 ms until it holds; panics after `secs` with `why()` (what the
/// test saw, for the failure's message).
pub fn wait_for(secs: u64, mut done: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > until {
            panic!("not within {secs} s: {}", why());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `iptables-restore --noflush` of `rules` in `ns`.
pub fn iptables_restore(ns: &str, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `n` (source address, TCP port) pairs no lab traffic uses: sources in 10.244.224.0/19,
/// 8192 addresses times ports from 1 up. Rules built from them (iptables' or netpath's
/// policies) are there to be walked or looked up, never to match.
pub fn unmatched(n: usize) -> impl Iterator<Item = (String, u16)> {
    (0..n).map(|i| {
        let a = i % 8192;
        (
            format!("10.244.{}.{}", 224 + a / 256, a % 256),
            1 + (i / 8192) as u16,
        )
    })
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["-n", ns]).args(args.split_whitespace());
    c
}

/// `ip netns exec NS ARGS...` (remounts /sys: not for commands that need the bpffs).
pub fn in_ns(ns: &str, args: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args.split_whitespace());
    c
}

pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(in_ns(ns, &format!("sysctl -qw {key}={value}")))
}

/// Pings `to` from namespace `ns`; returns (sent, received, ttl of the last reply).
pub fn ping(ns: &str, to: &str, count: u32, interval: &str) -> Result<(u32, u32, Option<u32>)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-c"])
        .arg(count.to_string())
        .args(["-i", interval, "-W", "1", to])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("ping {to} from {ns}: no summary in {text:?}"))?;
    let nums: Vec<u32> = stats
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    // TTL: ping once more, verbose.
    let ttl = if nums.get(1).copied().unwrap_or(0) > 0 {
        let one = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", to])
            .output()?;
        String::from_utf8_lossy(&one.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ttl=")?.parse().ok())
    } else {
        None
    };
    Ok((nums[0], nums[1], ttl))
}

/// Removes what labs of dead processes left behind (a test run killed with SIGKILL):
/// namespaces `np<pid>x*` and pin dirs `/sys/fs/bpf/np<pid>x*` whose pid is gone.
pub fn reap_stale() {
    let dead = |name: &str| -> bool {
        name.strip_prefix("np")
            .and_then(|r| r.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !alive(pid))
    };
    remove_pin_dirs(|name| dead(name));
    // Daemons of a lab whose test process died (dockerd, containerd, etcd) and what they
    // mounted, then their directories.
    if let Ok(dirs) = fs::read_dir(std::env::temp_dir()) {
        for d in dirs.flatten() {
            if d.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("np") && dead(n))
            {
                docker::kill_under(&d.path());
                docker::unmount_under(&d.path());
                let _ = fs::remove_dir_all(d.path());
            }
        }
    }
    remove_namespaces(|ns| dead(ns));
}

/// `netpath down` on a pin dir; whatever it could not remove is removed all the same.
pub fn netpath_down(pin_dir: &Path) -> Result<()> {
    let r = run(Command::new(netpath_bin())
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("down"));
    if r.is_err() {
        let _ = fs::remove_dir_all(pin_dir);
    }
    r
}

/// `netpath down` on every pin dir under /sys/fs/bpf whose name `select` picks.
fn remove_pin_dirs(select: impl Fn(&str) -> bool) {
    let Ok(dirs) = fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for d in dirs.flatten() {
        if select(&d.file_name().to_string_lossy()) {
            let _ = netpath_down(&d.path());
        }
    }
}

/// Whether `pid` runs: a killed process whose parent has not reaped it yet (a zombie,
/// state Z or X in /proc/PID/stat) still has its /proc entry but is dead.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Kills what runs in the namespaces `select` picks, then deletes them.
pub fn remove_namespaces(select: impl Fn(&str) -> bool) {
    let list = output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if select(ns) {
            if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", ns])) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

/// Everything of lab `id`, from outside the Lab value (a Ctrl-C handler).
pub fn remove_lab(id: &str) {
    let prefix = format!("{id}-");
    remove_pin_dirs(|name| name.starts_with(&prefix));
    let dir = std::env::temp_dir().join(id);
    docker::kill_under(&dir);
    docker::unmount_under(&dir);
    remove_namespaces(|ns| ns.starts_with(&prefix));
    let _ = fs::remove_dir_all(dir);
}

/// kill(2).
fn nix_kill(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: a plain syscall.
    if unsafe { libc::kill(pid as i32, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
