//! The pin dir: where the maps and links that outlive the agent live, and how any process
//! opens them again.
//!
//! ```text
//! <pin-dir>/maps/NP_*_V<layout>   maps (names carry the layout version)
//! <pin-dir>/links/<prog>          TCX links of the programs
//! <pin-dir>/links/<prog>@<ifindex> TCX links of np_from_container on each bridge port
//! <pin-dir>/migrating-copy/<map>  marks of an upgrade in progress (reconcile::migrate)
//! <pin-dir>/migrating-swap/<map>
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData, MapInfo, MapType};
use netpath_common::{
    AgentInfo, BuildInfo, Config, Counter, CtEntry, CtInfo, CtKey, DEFAULT_CT_SIZE, EVENTS_SIZE,
    Endpoint, EventLimit, GroupMember, MAX_ENDPOINTS, MAX_GROUP_MEMBERS, MAX_PEERS,
    MAX_POLICY_ENTRIES, MAX_POLICY_RULES, MAX_PUBLISH, MAX_REASONS, MonitorState, NatKey, NatValue,
    PeerInfo, PeerKey, PeerStats, PeerValue, PolicyRuleInfo, PolicyState, PolicyVerdict,
    PublishKey, PublishValue, RejectLimit, map_names,
};

/// Maps whose size comes from the config: any size is the right layout.
pub const SIZED: &[&str] = &[map_names::CT, map_names::NAT];

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netpath";

/// The marks of a migration in progress: a directory in the pin dir holding an empty
/// directory named after each new map being filled (bpffs holds no regular files, and no
/// name with a dot).
pub const COPYING: &str = "migrating-copy";
pub const SWAPPING: &str = "migrating-swap";

/// A pinned map's name as its family and layout version: `NP_CT_V1` -> ("NP_CT", 1).
pub fn split_name(name: &str) -> Option<(&str, u32)> {
    let (family, v) = name.rsplit_once("_V")?;
    if !name.starts_with("NP_") || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((family, v.parse().ok()?))
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

/// Layout of a map as the kernel reports it.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Layout {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The layout of every map this agent's programs define. A pinned map with the same
/// name but another layout is never reused: the agent refuses to start instead.
pub fn expected_layouts() -> Vec<(&'static str, Layout)> {
    use std::mem::size_of;
    let l = |map_type, key_size: usize, value_size: usize, max_entries| Layout {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
    };
    vec![
        (
            map_names::CONFIG,
            l(MapType::Array, 4, size_of::<Config>(), 1),
        ),
        (
            map_names::PEERS,
            l(
                MapType::LpmTrie,
                4 + size_of::<PeerKey>(),
                size_of::<PeerValue>(),
                MAX_PEERS,
            ),
        ),
        (
            map_names::COUNTERS,
            l(MapType::PerCpuArray, 4, size_of::<Counter>(), MAX_REASONS),
        ),
        (
            map_names::PEER_STATS,
            l(MapType::PerCpuArray, 4, size_of::<PeerStats>(), MAX_PEERS),
        ),
        (
            map_names::PEER_INFO,
            l(MapType::Array, 4, size_of::<PeerInfo>(), MAX_PEERS),
        ),
        (
            map_names::AGENT,
            l(MapType::Array, 4, size_of::<AgentInfo>(), 1),
        ),
        (
            map_names::UNDERLAY,
            l(MapType::Hash, 4, size_of::<PeerValue>(), MAX_PEERS),
        ),
        (
            map_names::CT,
            l(
                MapType::LruHash,
                size_of::<CtKey>(),
                size_of::<CtEntry>(),
                DEFAULT_CT_SIZE,
            ),
        ),
        (
            map_names::NAT,
            l(
                MapType::LruHash,
                size_of::<NatKey>(),
                size_of::<NatValue>(),
                DEFAULT_CT_SIZE,
            ),
        ),
        (
            map_names::PUBLISH,
            l(
                MapType::Hash,
                size_of::<PublishKey>(),
                size_of::<PublishValue>(),
                MAX_PUBLISH,
            ),
        ),
        (
            map_names::CT_INFO,
            l(MapType::Array, 4, size_of::<CtInfo>(), 1),
        ),
        (
            map_names::POLICY_STATE,
            l(MapType::Array, 4, size_of::<PolicyState>(), 1),
        ),
        (
            map_names::POLICY_SRC,
            l(MapType::LpmTrie, 4 + 8, 4, MAX_POLICY_ENTRIES),
        ),
        (
            map_names::POLICY_DST,
            l(MapType::LpmTrie, 4 + 12, 4, MAX_POLICY_ENTRIES),
        ),
        (
            map_names::POLICY_RULES,
            l(
                MapType::LpmTrie,
                4 + 8,
                size_of::<PolicyVerdict>(),
                MAX_POLICY_ENTRIES,
            ),
        ),
        (
            map_names::POLICY_STATS,
            l(
                MapType::PerCpuArray,
                4,
                size_of::<Counter>(),
                MAX_POLICY_RULES,
            ),
        ),
        (
            map_names::POLICY_INFO,
            l(
                MapType::Hash,
                4,
                size_of::<PolicyRuleInfo>(),
                MAX_POLICY_RULES,
            ),
        ),
        (
            map_names::GROUPS,
            l(
                MapType::Hash,
                size_of::<GroupMember>(),
                1,
                MAX_GROUP_MEMBERS,
            ),
        ),
        (
            map_names::REJECT_LIMIT,
            l(MapType::PerCpuArray, 4, size_of::<RejectLimit>(), 1),
        ),
        (map_names::EVENTS, l(MapType::RingBuf, 0, 0, EVENTS_SIZE)),
        (
            map_names::MONITOR,
            l(MapType::Array, 4, size_of::<MonitorState>(), 1),
        ),
        (
            map_names::EVENT_LIMIT,
            l(MapType::PerCpuArray, 4, size_of::<EventLimit>(), 1),
        ),
        (
            map_names::BUILD,
            l(MapType::Array, 4, size_of::<BuildInfo>(), 1),
        ),
        (
            map_names::ENDPOINTS,
            l(MapType::Hash, 4, size_of::<Endpoint>(), MAX_ENDPOINTS),
        ),
        (
            map_names::FLEET,
            l(MapType::Array, 4, size_of::<netpath_common::FleetInfo>(), 1),
        ),
        (
            map_names::DEBUG,
            l(
                MapType::Array,
                4,
                size_of::<netpath_common::DebugState>(),
                1,
            ),
        ),
        (
            map_names::DOCKER,
            l(
                MapType::Array,
                4,
                size_of::<netpath_common::DockerInfo>(),
                1,
            ),
        ),
        (
            map_names::NETWORKS,
            l(
                MapType::LpmTrie,
                4 + 4,
                size_of::<netpath_common::Network>(),
                netpath_common::MAX_NETWORKS,
            ),
        ),
    ]
}

pub fn layout_of(info: &MapInfo) -> Result<Layout> {
    Ok(Layout {
        map_type: info.map_type()?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn link_path(&self, prog: &str) -> PathBuf {
        self.links().join(prog)
    }

    /// Whether a datapath is pinned here: any map, of this layout or another.
    pub fn exists(&self) -> bool {
        fs::read_dir(self.maps()).is_ok_and(|mut d| d.next().is_some())
    }

    /// Makes sure the pin dir is on a bpf filesystem, mounting one on /sys/fs/bpf when
    /// the pin dir is below it and nothing is mounted there yet (the case on a fresh
    /// machine), then creates the dir.
    pub fn prepare(&self) -> Result<()> {
        let bpffs = Path::new("/sys/fs/bpf");
        if self.root.starts_with(bpffs) && !is_bpffs(bpffs) {
            nix::mount::mount(
                Some("bpf"),
                bpffs,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("bpffs is not mounted on /sys/fs/bpf and mounting it failed (it takes CAP_SYS_ADMIN, which the service does not give the agent): mount it first, `mount -t bpf bpf /sys/fs/bpf` (systemd does at boot)")?;
            log::info!("mounted bpffs on /sys/fs/bpf");
        }
        fs::create_dir_all(self.maps())
            .with_context(|| format!("creating pin dir {}", self.root.display()))?;
        fs::create_dir_all(self.links())?;
        if !is_bpffs(&self.root) {
            bail!(
                "pin dir {} is not on a bpf filesystem: choose one under /sys/fs/bpf, or mount one there (mount -t bpf bpf DIR)",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Refuses pinned maps whose layout differs from what this agent's programs expect.
    pub fn check_layouts(&self) -> Result<()> {
        for (name, want) in expected_layouts() {
            let path = self.map_path(name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            let mut have = layout_of(&info)?;
            if SIZED.contains(&name) {
                have.max_entries = want.max_entries;
            }
            if have != want {
                bail!(
                    "pinned map {} has layout {have:?}, this netpath expects {want:?}: \
                     it was left by another build; remove it with `netpath down --pin-dir {}`",
                    path.display(),
                    self.root.display()
                );
            }
        }
        Ok(())
    }

    /// Opens a pinned map, with a clear error when nothing is running there.
    pub fn open(&self, name: &str) -> Result<Map> {
        let path = self.map_path(name);
        if !path.exists() {
            if let Some(other) = self.other_layout_of(name) {
                bail!(
                    "{} holds {other}, not this netpath's {name}: the datapath is of another layout \
                     (another build of netpath runs it, or an upgrade has not started yet); use that build's netpath",
                    self.root.display()
                );
            }
            if self.map_path(map_names::AGENT).exists() {
                // A datapath is there, of a netpath that had no such map.
                bail!(
                    "the datapath at {} has no {name}: an older netpath made it. Restart its agent with this netpath (it adds the map and keeps every flow, see upgrades.md), or use the older netpath's CLI until then",
                    self.root.display()
                );
            }
            bail!(
                "no netpath datapath at {} (missing {name}): is `netpath run` started with this --pin-dir?",
                self.root.display()
            );
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Map::from_map_data(data).with_context(|| format!("opening {}", path.display()))
    }

    /// A pinned map of the same family as `name` but another layout version.
    fn other_layout_of(&self, name: &str) -> Option<String> {
        let (family, _) = split_name(name)?;
        fs::read_dir(self.maps())
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| split_name(n).is_some_and(|(f, _)| f == family))
    }

    /// Removes the marks of a migration (what `netpath down` and a finished migration do).
    pub fn remove_marks(&self) -> Result<()> {
        for mark in [COPYING, SWAPPING] {
            let p = self.root.join(mark);
            let Ok(children) = fs::read_dir(&p) else {
                continue;
            };
            for c in children.flatten() {
                fs::remove_dir(c.path())
                    .with_context(|| format!("removing {}", c.path().display()))?;
            }
            fs::remove_dir(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }

    /// Takes an exclusive lock on the pin dir, so that the agent and CLI commands that
    /// change maps (peer add/del) never interleave. Released on drop.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        let dir = fs::File::open(&self.root)
            .with_context(|| format!("opening {}", self.root.display()))?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", self.root.display()))
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}
