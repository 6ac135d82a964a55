//! Upgrades across a change of map layout, keeping every entry.
//!
//! A pinned map's name carries its layout version (`NP_CT_V1`). A build that changes a
//! map's key or value gives it the next name (`NP_CT_V2`) and says in [`known`] how the
//! older map's entries are carried. An agent that finds maps of an older layout pinned:
//!
//! 1. marks the pin dir (`migrating-copy`), loads its programs, which creates and pins the
//!    new maps beside the old ones ([`Plan::prepare`]), and copies every entry of each old
//!    map into its new one, converted ([`Plan::copy`]). The old programs still run on the
//!    old maps: nothing has changed for a packet yet.
//! 2. reconciles the desired state into the maps, carries again what the old programs
//!    wrote meanwhile, marks `migrating-swap` ([`Plan::swapping`]) and swaps its programs
//!    into the pinned links, each atomically (the agent's attach).
//! 3. once every link runs the new programs, carries what the old programs wrote until
//!    their swap (flows they created, entries they refreshed, what they counted; an
//!    entry a new program wrote meanwhile is newer and stays), unpins the old maps,
//!    which the kernel frees with the last old program, and removes the mark
//!    ([`Plan::finish`]).
//!
//! What no pass can carry: a flow that starts in the milliseconds of the swap itself,
//! between the first and the last link, may see one direction on an old program and the
//! other on a new one, and then has an entry in each map; the new one wins.
//!
//! An agent killed in step 1 leaves the old programs running on the old maps: the next
//! one removes the partial copies and starts again. Killed in step 2 or 3, the new maps
//! are live: the next one keeps them and finishes. A pinned map of a newer layout than
//! this build's (a downgrade), or of an older one this build cannot carry, is refused
//! before anything changes.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use aya::maps::{MapInfo, MapType};
use netpath_common::map_names;

use crate::{
    pin::{COPYING, PinDir, SWAPPING, split_name as split},
    reconcile::fault,
    sys,
};

/// How the entries of an older map become entries of this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// Every entry, each old value's bytes at the start of the new, longer value: fields
    /// the new layout appends start at zero. Keys are unchanged.
    Append,
    /// As [`Carry::Append`], for values made of u64 counters: what the old programs
    /// counted between the copy and the swap is added to what the new ones counted since.
    Sums,
    /// Nothing carried: the agent writes the whole map from the desired state.
    Rewritten,
}

/// An older map this build carries into one of its own.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub from: &'static str,
    pub to: &'static str,
    pub carry: Carry,
}

/// Every older layout this build migrates from.
pub fn known() -> Vec<Migration> {
    let mut v = vec![Migration {
        // Layout 1's config (before the gateway): the agent writes the config anyway.
        from: "NP_CONFIG_V1",
        to: map_names::CONFIG,
        carry: Carry::Rewritten,
    }];
    if cfg!(feature = "layout-test") {
        // The upgrade test's build: a field added to CtEntry and a counter to PeerStats.
        v.push(Migration {
            from: "NP_CT_V1",
            to: map_names::CT,
            carry: Carry::Append,
        });
        v.push(Migration {
            from: "NP_PEER_STATS_V1",
            to: map_names::PEER_STATS,
            carry: Carry::Sums,
        });
    }
    v
}

/// The new maps a mark names.
fn marked(pins: &PinDir) -> BTreeSet<String> {
    [COPYING, SWAPPING]
        .iter()
        .filter_map(|m| fs::read_dir(pins.root.join(m)).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Where an interrupted migration stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    None,
    Copying,
    Swapping,
}

fn stage(pins: &PinDir) -> Stage {
    if pins.root.join(SWAPPING).is_dir() {
        Stage::Swapping
    } else if pins.root.join(COPYING).is_dir() {
        Stage::Copying
    } else {
        Stage::None
    }
}

/// One map to carry.
#[derive(Debug)]
struct Step {
    from: String,
    to: &'static str,
    carry: Carry,
    /// The new map is live already (an interrupted migration past its swap): nothing is
    /// copied before the swap.
    resumed: bool,
    /// The old entries as the first copy read them (key -> value bytes).
    snapshot: HashMap<Vec<u8>, Vec<u8>>,
    copied: usize,
    /// Entries carried again just before the swap.
    before_swap: usize,
}

/// What an agent starting on this pin dir has to migrate.
#[derive(Debug, Default)]
pub struct Plan {
    steps: Vec<Step>,
    /// Older maps beside their successor with no migration in progress (an older
    /// netpath's upgrade left them): nothing uses them; unpinned after the swap.
    stale: Vec<String>,
    /// The mark of an earlier migration, to remove once this one is done.
    marked: bool,
}

/// Reads the pin dir: which pinned maps are of an older layout, and how each is carried.
/// Refuses a map of a newer layout (or a map this build does not know) and an older one
/// with no migration, naming it and what to do; nothing is changed then.
pub fn plan(pins: &PinDir) -> Result<Plan> {
    let stage = stage(pins);
    let pinned: BTreeSet<String> = match fs::read_dir(pins.maps()) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    let ours: Vec<(&str, u32, &'static str)> = map_names::ALL
        .iter()
        .filter_map(|n| split(n).map(|(f, v)| (f, v, *n)))
        .collect();
    let known = known();
    let filling = marked(pins);
    let down = format!("netpath down --pin-dir {}", pins.root.display());
    let mut plan = Plan {
        marked: stage != Stage::None,
        ..Plan::default()
    };
    for name in &pinned {
        let Some((family, v)) = split(name) else {
            continue;
        };
        let Some(&(_, n, to)) = ours.iter().find(|o| o.0 == family) else {
            bail!(
                "pinned map {name} is not one this netpath ({}, layout {}) knows: a newer netpath made this datapath. \
                 Run that netpath (or a newer one) again; to go back to this one, `{down}` first (it cuts every flow)",
                env!("CARGO_PKG_VERSION"),
                netpath_common::LAYOUT_VERSION
            );
        };
        if v == n {
            continue;
        }
        if v > n {
            bail!(
                "pinned map {name} has a newer layout than this netpath's {to}: a newer netpath made this datapath, \
                 and this one cannot read its maps (a downgrade). Run that netpath (or a newer one) again; \
                 to go back to this one, `{down}` first (it cuts every flow)"
            );
        }
        let Some(m) = known.iter().find(|m| m.from == name && m.to == to) else {
            bail!(
                "pinned map {name} has an older layout than this netpath's {to}, and this netpath cannot carry it: \
                 upgrade through a netpath that migrates it, or `{down}` first (it cuts every flow)"
            );
        };
        if pinned.contains(to) && !filling.contains(to) {
            plan.stale.push(name.clone());
            continue;
        }
        plan.steps.push(Step {
            from: name.clone(),
            to,
            carry: m.carry,
            resumed: stage == Stage::Swapping && pinned.contains(to),
            snapshot: HashMap::new(),
            copied: 0,
            before_swap: 0,
        });
    }
    Ok(plan)
}

/// How a map's entries are laid out in bytes.
#[derive(Clone, Copy, Debug)]
struct Shape {
    map_type: MapType,
    key: usize,
    value: usize,
    /// Possible CPUs for a per-CPU map (each value rounded up to 8 bytes), else 1.
    cpus: usize,
}

impl Shape {
    fn of(info: &MapInfo) -> Result<Shape> {
        let mut shape = Shape {
            map_type: info.map_type()?,
            key: info.key_size() as usize,
            value: info.value_size() as usize,
            cpus: 1,
        };
        if shape.per_cpu() {
            shape.cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        }
        Ok(shape)
    }

    fn per_cpu(&self) -> bool {
        matches!(
            self.map_type,
            MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
        )
    }

    /// Bytes of one value as the syscalls read and write it.
    fn value_len(&self) -> usize {
        if self.per_cpu() {
            self.value.next_multiple_of(8) * self.cpus
        } else {
            self.value
        }
    }

    fn is_array(&self) -> bool {
        matches!(self.map_type, MapType::Array | MapType::PerCpuArray)
    }
}

/// An old value (`old` shape) as a value of the `new` shape: each CPU's bytes at the
/// start of its slot, the rest zero.
fn append(old: &Shape, new: &Shape, v: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; new.value_len()];
    let (os, ns) = if old.per_cpu() {
        (old.value.next_multiple_of(8), new.value.next_multiple_of(8))
    } else {
        (old.value, new.value)
    };
    let n = old.value.min(new.value);
    for c in 0..old.cpus.min(new.cpus) {
        out[c * ns..c * ns + n].copy_from_slice(&v[c * os..c * os + n]);
    }
    out
}

/// `cur + (now - then)`, word by word as u64 counters (wrapping, as counters do).
fn add_delta(cur: &[u8], now: &[u8], then: &[u8]) -> Vec<u8> {
    let word = |b: &[u8], i: usize| {
        b.get(i * 8..i * 8 + 8)
            .map_or(0, |w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
    };
    let mut out = cur.to_vec();
    for i in 0..cur.len() / 8 {
        let v = word(cur, i).wrapping_add(word(now, i).wrapping_sub(word(then, i)));
        out[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    out
}

/// Every entry of a map, as (key, value) bytes.
fn entries(fd: &OwnedFd, shape: &Shape) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let len = shape.value_len();
    match shape.map_type {
        // No batch lookup for tries: walk the keys.
        MapType::LpmTrie => {
            let mut out = Vec::new();
            for k in sys::keys(fd.as_fd(), shape.key)? {
                if let Some(v) = sys::lookup(fd.as_fd(), &k, len)? {
                    out.push((k, v));
                }
            }
            Ok(out)
        }
        MapType::Array
        | MapType::PerCpuArray
        | MapType::Hash
        | MapType::LruHash
        | MapType::PerCpuHash
        | MapType::LruPerCpuHash => {
            let (keys, values, n) = sys::lookup_batch(fd.as_fd(), shape.key, len, 4096)?;
            Ok((0..n)
                .map(|i| {
                    (
                        keys[i * shape.key..(i + 1) * shape.key].to_vec(),
                        values[i * len..(i + 1) * len].to_vec(),
                    )
                })
                .collect())
        }
        other => bail!("no way to copy the entries of a {other:?} map"),
    }
}

/// The old and new map of a step, opened from their pins.
struct Pair {
    old: OwnedFd,
    new: OwnedFd,
    old_shape: Shape,
    new_shape: Shape,
}

impl Pair {
    fn open(pins: &PinDir, step: &Step) -> Result<Pair> {
        let (op, np) = (pins.map_path(&step.from), pins.map_path(step.to));
        let oi = MapInfo::from_pin(&op).with_context(|| format!("opening {}", op.display()))?;
        let ni = MapInfo::from_pin(&np).with_context(|| format!("opening {}", np.display()))?;
        let (old_shape, new_shape) = (Shape::of(&oi)?, Shape::of(&ni)?);
        if old_shape.map_type != new_shape.map_type
            || old_shape.key != new_shape.key
            || old_shape.value > new_shape.value
        {
            bail!(
                "{} ({old_shape:?}) cannot be carried into {} ({new_shape:?}) by appending",
                step.from,
                step.to
            );
        }
        Ok(Pair {
            old: sys::obj_get(&op)?,
            new: sys::obj_get(&np)?,
            old_shape,
            new_shape,
        })
    }

    fn convert(&self, v: &[u8]) -> Vec<u8> {
        append(&self.old_shape, &self.new_shape, v)
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.stale.is_empty() && !self.marked
    }

    /// Whether pinned maps will be carried into new ones (the agent logs and marks it).
    pub fn migrates(&self) -> bool {
        !self.steps.is_empty()
    }

    /// The maps carried, for the agent's log: "NP_CT_V1 -> NP_CT_V2 (10012 entries), ...".
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|s| match (s.carry, s.resumed) {
                (Carry::Rewritten, _) => format!("{} -> {} (written anew)", s.from, s.to),
                (_, true) => format!("{} -> {} (past its swap: resumed)", s.from, s.to),
                _ => format!("{} -> {} ({} entries)", s.from, s.to, s.copied),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The size of the old map that `name` (one of this build's) is carried from, if it
    /// is: a migrated conntrack table keeps its size, as a pinned one does.
    pub fn old_max_entries(&self, pins: &PinDir, name: &str) -> Option<u32> {
        let step = self.steps.iter().find(|s| s.to == name)?;
        MapInfo::from_pin(pins.map_path(&step.from))
            .ok()
            .map(|i| i.max_entries())
    }

    /// Before the programs are loaded: removes the partial copies an agent killed while
    /// copying left (the old maps were still the live ones), and marks the copy with the
    /// new maps it fills.
    pub fn prepare(&self, pins: &PinDir) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        let stage = stage(pins);
        if stage == Stage::Copying {
            for s in &self.steps {
                let p = pins.map_path(s.to);
                if p.exists() {
                    fs::remove_file(&p)
                        .with_context(|| format!("removing the partial copy {}", p.display()))?;
                    log::info!(
                        "removed {}, left half-copied by an interrupted upgrade",
                        s.to
                    );
                }
            }
        }
        let mark = pins.root.join(if stage == Stage::Swapping {
            SWAPPING
        } else {
            COPYING
        });
        for s in &self.steps {
            match fs::create_dir_all(mark.join(s.to)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("marking the migration in {}", mark.display()));
                }
            }
        }
        Ok(())
    }

    /// After the programs are loaded (the new maps exist, pinned), before anything reads
    /// or writes them: copies every entry of each old map into its new one.
    pub fn copy(&mut self, pins: &PinDir) -> Result<()> {
        for step in &mut self.steps {
            if step.resumed || step.carry == Carry::Rewritten {
                continue;
            }
            let pair = Pair::open(pins, step)?;
            for (k, v) in entries(&pair.old, &pair.old_shape)? {
                // A new array starts zeroed: its zero entries need no write.
                if !(pair.new_shape.is_array() && v.iter().all(|b| *b == 0)) {
                    fault::write()?;
                    sys::update(pair.new.as_fd(), &k, &pair.convert(&v), 0)
                        .with_context(|| format!("copying {} into {}", step.from, step.to))?;
                    step.copied += 1;
                }
                step.snapshot.insert(k, v);
            }
        }
        Ok(())
    }

    /// Just before the first program is swapped: carries what the old programs wrote
    /// since the copy (the agent reconciled in between), so that the swap finds the new
    /// maps as current as can be; from here on the new maps are live.
    pub fn swapping(&mut self, pins: &PinDir) -> Result<()> {
        if self.steps.is_empty() || stage(pins) == Stage::Swapping {
            return Ok(());
        }
        for step in &mut self.steps {
            if !step.resumed && step.carry != Carry::Rewritten {
                step.before_swap = carry_again(pins, step)?;
            }
        }
        fs::rename(pins.root.join(COPYING), pins.root.join(SWAPPING))
            .with_context(|| format!("marking the swap in {}", pins.root.display()))
    }

    /// Once every link runs the new programs: carries what the old programs wrote since
    /// [`Plan::swapping`] (until their own swap), unpins the old maps and removes the
    /// mark. Returns a line per map.
    pub fn finish(mut self, pins: &PinDir) -> Result<Vec<String>> {
        fault::at("swapped");
        let mut done = Vec::new();
        for step in &mut self.steps {
            let again = if step.carry == Carry::Rewritten {
                0
            } else {
                carry_again(pins, step)?
            };
            fs::remove_file(pins.map_path(&step.from))
                .with_context(|| format!("unpinning {}", step.from))?;
            done.push(match step.carry {
                Carry::Rewritten => format!("{} -> {}: written anew", step.from, step.to),
                _ if step.resumed => format!(
                    "{} -> {}: resumed after its swap, {again} entries carried again",
                    step.from, step.to
                ),
                _ => format!(
                    "{} -> {}: {} entries, {} carried again before the swap, {again} after it",
                    step.from, step.to, step.copied, step.before_swap
                ),
            });
        }
        for name in &self.stale {
            fs::remove_file(pins.map_path(name)).with_context(|| format!("unpinning {name}"))?;
            done.push(format!(
                "{name}: left by an earlier upgrade, unused, unpinned"
            ));
        }
        pins.remove_marks()?;
        Ok(done)
    }
}

/// Another pass: each old entry the new programs have not touched since the last pass is
/// brought up to date; one the last pass did not see (created by an old program in
/// between) is added; counters get what the old programs counted meanwhile. The
/// snapshot becomes what this pass read.
fn carry_again(pins: &PinDir, step: &mut Step) -> Result<usize> {
    let pair = Pair::open(pins, step)?;
    let mut again = 0;
    for (k, v) in entries(&pair.old, &pair.old_shape)? {
        let then = step.snapshot.get(&k);
        // Most entries did not change since the last pass: nothing to carry, no lookup.
        if then == Some(&v) {
            continue;
        }
        let cur = sys::lookup(pair.new.as_fd(), &k, pair.new_shape.value_len())?;
        let write = match (cur, then) {
            // Made by an old program after the last pass (arrays always have every entry).
            (None, _) => Some((pair.convert(&v), 1)),
            (Some(cur), Some(then)) => match step.carry {
                Carry::Sums => Some((add_delta(&cur, &pair.convert(&v), &pair.convert(then)), 0)),
                // Refreshed by an old program; kept if a new one wrote it since.
                _ if cur == pair.convert(then) => Some((pair.convert(&v), 0)),
                _ => None,
            },
            _ => None,
        };
        if let Some((value, flags)) = write {
            let flags = if pair.new_shape.is_array() { 0 } else { flags };
            if sys::update(pair.new.as_fd(), &k, &value, flags)? {
                again += 1;
            }
        }
        step.snapshot.insert(k, v);
    }
    Ok(again)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(map_type: MapType, value: usize, cpus: usize) -> Shape {
        Shape {
            map_type,
            key: 4,
            value,
            cpus,
        }
    }

    #[test]
    fn names_split_into_family_and_version() {
        assert_eq!(split("NP_CT_V1"), Some(("NP_CT", 1)));
        assert_eq!(split("NP_PEER_STATS_V12"), Some(("NP_PEER_STATS", 12)));
        for bad in ["NP_CT", "NP_CT_V", "NP_CT_Vx", "OTHER_V1", "NP_CT_V1a"] {
            assert_eq!(split(bad), None, "{bad}");
        }
        // Every map this build pins has a name of that form, each family once.
        let mut families: Vec<_> = map_names::ALL.iter().map(|n| split(n).unwrap().0).collect();
        families.sort();
        let n = families.len();
        families.dedup();
        assert_eq!(families.len(), n);
    }

    #[test]
    fn an_appended_field_starts_at_zero_on_every_cpu() {
        let old = shape(MapType::Hash, 3, 1);
        let new = shape(MapType::Hash, 5, 1);
        assert_eq!(append(&old, &new, &[1, 2, 3]), vec![1, 2, 3, 0, 0]);
        // Per CPU: each slot is rounded up to 8 bytes.
        let old = shape(MapType::PerCpuArray, 16, 2);
        let new = shape(MapType::PerCpuArray, 24, 2);
        let v: Vec<u8> = (1..=32).collect();
        let out = append(&old, &new, &v);
        assert_eq!(out.len(), 48);
        assert_eq!(&out[..16], &v[..16]);
        assert_eq!(&out[16..24], &[0; 8]);
        assert_eq!(&out[24..40], &v[16..32]);
        assert_eq!(&out[40..], &[0; 8]);
    }

    #[test]
    fn counters_get_what_was_counted_in_between() {
        let w = |xs: &[u64]| xs.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
        // Copied at 10 and 100; the old programs went on to 15 and 160, the new ones
        // counted 3 and 7 on top of the copy.
        let out = add_delta(&w(&[13, 107]), &w(&[15, 160]), &w(&[10, 100]));
        assert_eq!(out, w(&[18, 167]));
    }

    #[test]
    fn this_build_migrates_only_from_older_layouts_of_its_own_maps() {
        for m in known() {
            let (ff, fv) = split(m.from).unwrap();
            let (tf, tv) = split(m.to).unwrap();
            assert_eq!(ff, tf, "{m:?}");
            assert!(fv < tv, "{m:?}");
            assert!(map_names::ALL.contains(&m.to), "{m:?}");
        }
    }
}
