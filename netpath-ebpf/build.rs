use which::which;

/// Makes cargo rebuild the programs when bpf-linker changes (it is found on PATH by rustc).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
