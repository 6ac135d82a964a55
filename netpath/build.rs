//! Builds netpath-ebpf for the BPF target with aya-build; src/lib.rs embeds the object.
//!
//! One toolchain for everything: the eBPF crate needs `-Z build-std=core`, which stable
//! accepts with RUSTC_BOOTSTRAP=1. It is set here, for the nested cargo only, so the
//! userspace crates are never rebuilt because of it. `cargo xtask` installs rust-src and
//! bpf-linker first; without them this fails with the compiler's own message. The
//! nested build is quiet: its output shows only when the compiler has something to say.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../netpath-ebpf");
    let root = root.canonicalize()?;
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    // The outer cargo runs under this toolchain; build the programs with the same one.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    println!("cargo:rerun-if-changed=../netpath-common/src");
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build relays every line the nested cargo prints on stderr as a cargo warning
    // (about 50 "Compiling ..." lines). Quiet, it prints nothing but what the compiler
    // says, which aya-build still relays: warnings and errors of the eBPF crate only.
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    // The upgrade test's build: the programs with the same layout change as the agent.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_LAYOUT_TEST").is_some() {
        &["layout-test"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpath-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
