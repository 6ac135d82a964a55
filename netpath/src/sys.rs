//! The bpf(2) calls aya 0.14 does not expose: counting the entries of any map by its
//! key size alone (fill levels of every map, whatever its types), reading a whole map in
//! a few calls (BPF_MAP_LOOKUP_BATCH), opening a pinned link without touching its pin,
//! and the interface of a TCX or XDP link; raw lookups and updates of any map by bytes
//! (the migration of an older layout); and a count of a thread's bpf(2) calls.

use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{Result, bail};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How many entries a hash, LRU hash or LPM trie map holds, by walking its keys (no
/// value is read; two key buffers, whatever the count).
pub fn count_keys(fd: BorrowedFd<'_>, key_size: u32) -> Result<u64> {
    let (mut key, mut next) = (vec![0u8; key_size as usize], vec![0u8; key_size as usize]);
    let mut n = 0u64;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            // The first call has no key: the kernel starts from the first entry.
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            value_or_next: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => bail!("walking the map's keys: {e}"),
        }
        std::mem::swap(&mut key, &mut next);
        n += 1;
    }
}

/// Every entry of a map (array, per-CPU array, hash, LRU hash), read in batches of up to
/// `max` entries with BPF_MAP_LOOKUP_BATCH: the keys (`key_size` bytes each) and values
/// (`value_size` bytes each; for a per-CPU map, the value rounded up to 8 bytes times
/// the possible CPUs) as raw bytes, and how many entries there are.
pub fn lookup_batch(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    max: usize,
) -> Result<(Vec<u8>, Vec<u8>, usize)> {
    let max = max.max(1);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let (mut kbuf, mut vbuf) = (vec![0u8; key_size * max], vec![0u8; value_size * max]);
    // The batch token: a bucket index for hashes, a key for arrays.
    let (mut token, mut next) = (vec![0u8; key_size.max(8)], vec![0u8; key_size.max(8)]);
    let mut n = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: kbuf.as_mut_ptr() as u64,
            values: vbuf.as_mut_ptr() as u64,
            count: max as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        keys.extend_from_slice(&kbuf[..got * key_size]);
        values.extend_from_slice(&vbuf[..got * value_size]);
        n += got;
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values, n)),
            Err(e) => bail!("reading the map in batches: {e}"),
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

/// The value of `key`, `value_len` bytes (per-CPU maps: every CPU's), or None when the
/// map has no such entry.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value_len: usize) -> Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_len];
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value_or_next: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => bail!("reading an entry: {e}"),
    }
}

/// Writes `value` under `key` (`flags`: BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2). Returns
/// false when the flags refused it (the entry exists, or does not).
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value_or_next: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if flags != 0 && matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) => {
            Ok(false)
        }
        Err(e) => bail!("writing an entry: {e}"),
    }
}

/// Every key of a map, walked with BPF_MAP_GET_NEXT_KEY (any map with keys, LPM tries
/// among them, which have no batch lookup).
pub fn keys(fd: BorrowedFd<'_>, key_size: usize) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            // The first call has no key: the kernel starts from the first entry.
            key: out.last().map_or(0, |k| k.as_ptr() as u64),
            value_or_next: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => out.push(next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => bail!("walking the map's keys: {e}"),
        }
    }
}

/// What the kernel says of a link: its id, program id and interface (TCX and XDP links;
/// 0 once the interface is gone and the link is defunct).
#[derive(Debug, Clone, Copy)]
pub struct LinkFacts {
    pub id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
}

pub fn link_facts(fd: BorrowedFd<'_>) -> Result<LinkFacts> {
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16 whose tcx and
    // xdp members start with the ifindex.
    let mut info = [0u32; 16];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map_err(|e| anyhow::anyhow!("reading the link's info: {e}"))?;
    Ok(LinkFacts {
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned object (a link, here) without touching its pin.
pub fn obj_get(path: &std::path::Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjGetAttr as *mut libc::c_void,
            std::mem::size_of::<ObjGetAttr>() as u32,
        )
    };
    if fd < 0 {
        bail!(
            "opening {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Counts the bpf(2) calls of the thread that opened it, whatever makes them (aya or the
/// calls above): a perf counter on the `syscalls:sys_enter_bpf` tracepoint. Its id comes
/// from tracefs, mounted for the moment in a directory of its own when it is not at
/// /sys/kernel/tracing. For `netpath bench`, which reports map calls next to times.
pub struct BpfCalls(std::fs::File);

impl BpfCalls {
    /// None where the kernel has no syscall tracepoints or perf events are refused.
    pub fn open() -> Option<BpfCalls> {
        use std::os::fd::FromRawFd;
        let id = tracepoint_id("syscalls/sys_enter_bpf")?;
        // struct perf_event_attr, 128 bytes: type (PERF_TYPE_TRACEPOINT = 2) and size in
        // the first word, config (the tracepoint's id) in the second; the rest zero
        // (enabled, counting, this thread on any CPU).
        let mut attr = [0u64; 16];
        attr[0] = 2 | (128 << 32);
        attr[1] = id;
        const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
        // SAFETY: attr is a 128-byte perf_event_attr that outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        // SAFETY: a new descriptor of ours when not negative.
        (fd >= 0).then(|| BpfCalls(unsafe { std::fs::File::from_raw_fd(fd as i32) }))
    }

    /// The calls counted so far.
    pub fn count(&self) -> u64 {
        use std::io::Read;
        let mut n = [0u8; 8];
        match (&self.0).read_exact(&mut n) {
            Ok(()) => u64::from_ne_bytes(n),
            Err(_) => 0,
        }
    }
}

/// A tracepoint's id ("syscalls/sys_enter_bpf"), from tracefs.
fn tracepoint_id(name: &str) -> Option<u64> {
    let read = |root: &std::path::Path| -> Option<u64> {
        let p = root.join("events").join(name).join("id");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    if let Some(id) = read(std::path::Path::new("/sys/kernel/tracing")) {
        return Some(id);
    }
    let dir = std::env::temp_dir().join(format!("netpath-tracefs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mounted = nix::mount::mount(
        Some("tracefs"),
        &dir,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    let id = mounted.then(|| read(&dir)).flatten();
    if mounted {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&dir);
    id
}
