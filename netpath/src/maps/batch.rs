//! Typed whole-map reads over `sys::lookup_batch` (`BPF_MAP_LOOKUP_BATCH`, which aya 0.14
//! does not wrap): many entries of an array or hash map per syscall instead of one. A
//! full read of the 65,536 peer slots is 16 syscalls instead of 65,536.

use std::os::fd::AsFd;

use anyhow::{Result, bail};
use aya::maps::MapData;

/// Entries asked for per syscall.
const CHUNK: usize = 4096;

/// Every entry of `map` (an array or hash map, not per-CPU). The key and value types must
/// be the map's (checked against its sizes).
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    let info = map.info()?;
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    if info.key_size() as usize != ks || info.value_size() as usize != vs {
        bail!(
            "map {:?}: key/value sizes {}/{} are not {ks}/{vs}",
            info.name_as_str(),
            info.key_size(),
            info.value_size()
        );
    }
    let (keys, values, n) = crate::sys::lookup_batch(map.fd().as_fd(), ks, vs, CHUNK)?;
    Ok((0..n)
        .map(|i| {
            // SAFETY: K and V are Pod of exactly these sizes (checked above); the reads
            // are unaligned-safe.
            unsafe {
                (
                    std::ptr::read_unaligned(keys[i * ks..].as_ptr() as *const K),
                    std::ptr::read_unaligned(values[i * vs..].as_ptr() as *const V),
                )
            }
        })
        .collect())
}
