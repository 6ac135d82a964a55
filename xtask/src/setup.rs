//! Installs what a fresh machine lacks, one step at a time with a progress line each:
//! rust-src (for `-Z build-std=core`), bpf-linker (built against the LLVM that rustc
//! ships, see shared/notes/toolchain.md) and the Debian packages the lab uses.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The font the benchmark's chart is drawn with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// (command, or absolute path of a file, that must exist; Debian package that provides it)
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("iptables", "iptables"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("kill", "procps"),
    (FONT, "fonts-dejavu-core"),
    // The fleet's store: tests start their own members in lab namespaces.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // The fleet's TLS test makes its certificates.
    ("openssl", "openssl"),
    // Docker hosts: tests start their own dockerd in lab namespaces (no service starts
    // at install: see POLICY_RC); images are made from busybox-static's busybox.
    ("dockerd", "docker.io"),
    ("/usr/bin/busybox", "busybox-static"),
    // Compose users' networks: the Docker test brings a project up with Debian's client.
    ("docker-compose", "docker-compose"),
    // The bad-input tests edit pinned maps behind netpath's back, as an operator would.
    ("bpftool", "bpftool"),
    // The lab's agents run bounded to the service unit's capabilities.
    ("setpriv", "util-linux"),
    // The package's test checks it as Debian's archive would.
    ("lintian", "lintian"),
    // The wire check turns the lab's checksum offloads off.
    ("ethtool", "ethtool"),
];

/// What every build needs: etcd-client (the crate) compiles etcd's protobuf definitions.
const DEBIAN_BUILD: &[(&str, &str)] = &[
    ("protoc", "protobuf-compiler"),
    // protoc's well-known types (google/protobuf/*.proto), which etcd's files import.
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
    // `cargo xtask package`: the libraries' Depends, and the stripped binary.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
];

/// Debian's invoke-rc.d asks this file whether a package may start its service. etcd-server
/// would start an etcd on localhost at install: the lab starts its own, nothing else may
/// run. Present while apt-get runs (unless the machine has its own already).
const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

fn step(name: &str) -> Step {
    eprint!("[setup] {name:<12} ");
    Step(Instant::now())
}

struct Step(Instant);

impl Step {
    fn done(self, what: &str) {
        eprintln!("{what} ({:.1}s)", self.0.elapsed().as_secs_f64());
    }
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, showing its output only when it fails.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        eprintln!("FAILED");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(())
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["--print", "sysroot"]))?.trim(),
    ))
}

fn rust_src() -> Result<()> {
    let s = step("rust-src");
    if sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        s.done("present");
        return Ok(());
    }
    quiet(Command::new("rustup").args(["component", "add", "rust-src"]))
        .context("installing rust-src with rustup (needed by -Z build-std=core)")?;
    s.done("installed");
    Ok(())
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The bpf-linker release built (the one the eBPF programs were last built and verified
/// with: a newer one is taken by changing this, not by what crates.io has that day).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// bpf-linker must run (its rpath points into a toolchain's lib dir) and be built for
/// the LLVM major that rustc uses; that LLVM and the release are recorded beside it in a
/// stamp file.
fn bpf_linker() -> Result<()> {
    let s = step("bpf-linker");
    let sysroot = sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|n| {
            n.strip_prefix("lib")
                .and_then(|n| n.strip_suffix(".so"))
                .filter(|n| n.starts_with("LLVM-"))
                .map(str::to_owned)
        })
        .with_context(|| {
            format!(
                "no libLLVM-*.so in {}: is this a rustup toolchain?",
                lib.display()
            )
        })?;
    let major = llvm
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let bin = cargo_bin_dir();
    let stamp = bin.join(".bpf-linker-llvm");
    let runs = Command::new(bin.join("bpf-linker"))
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let want = format!("{llvm} {BPF_LINKER_VERSION}");
    if runs && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        s.done(&format!("present, {BPF_LINKER_VERSION} for {llvm}"));
        return Ok(());
    }
    eprint!("building {BPF_LINKER_VERSION} against {llvm}, about a minute... ");
    let rustflags = format!(
        "-L {lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    let root = bin.parent().unwrap_or(&bin).to_path_buf();
    quiet(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .arg("--root")
            .arg(&root)
            .arg("--force")
            .env("RUSTFLAGS", rustflags),
    )
    .context("building bpf-linker from crates.io")?;
    std::fs::write(&stamp, &want)?;
    s.done("installed");
    Ok(())
}

fn debian(lab: bool) -> Result<()> {
    let s = step("packages");
    let missing: Vec<&str> = DEBIAN_BUILD
        .iter()
        .chain(if lab { DEBIAN } else { &[] })
        .filter(|(cmd, _)| {
            if cmd.starts_with('/') {
                !std::path::Path::new(cmd).exists()
            } else {
                !have(cmd)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        s.done("present");
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing {missing:?} and no apt-get: install them with your package manager");
    }
    eprint!("installing {}... ", missing.join(" "));
    let ours = !std::path::Path::new(POLICY_RC).exists();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC,
            "#!/bin/sh\n# netpath setup: no service starts at install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC}"))?;
        std::fs::set_permissions(POLICY_RC, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = quiet(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        quiet(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if ours {
        let _ = std::fs::remove_file(POLICY_RC);
    }
    installed.with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    s.done("installed");
    Ok(())
}

/// Everything the build needs; the lab packages only where `lab` is set.
pub fn ensure(lab: bool) -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian(lab)?;
    Ok(())
}
