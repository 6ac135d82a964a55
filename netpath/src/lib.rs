//! netpath's agent and CLI as a library: the integration tests and the benchmark use the
//! same code as the `netpath` binary.
//!
//! Layers, each using only those above it in this list (a unit test checks it):
//! - base: [`pin`] (the pin dir), [`iface`], [`sys`] (raw syscalls), [`packet`] (frames),
//!   [`caps`] (the capabilities the agent needs);
//! - [`maps`]: typed handles on the pinned maps; [`state`]: the desired state's types
//!   and checks. Neither knows the other;
//! - [`datapath`]: loading the programs, attaching them, removing them;
//! - [`reconcile`]: one reconciler per map family, desired state -> maps;
//! - [`sources`]: the config file and the CLI's live entries -> one desired state;
//! - [`inspect`]: reading the maps for people (reports, dumps, status, trace, doctor,
//!   monitor, metrics);
//! - [`bench`], [`agent`]: per-packet costs; the agent loop;
//! - [`fuzz`]: generated frames through every program, invariants checked (bench's host);
//! - [`cli`]: the command line.

pub mod agent;
pub mod bench;
pub mod caps;
pub mod cli;
pub mod datapath;
pub mod fuzz;
pub mod iface;
pub mod inspect;
pub mod maps;
pub mod packet;
pub mod pin;
pub mod reconcile;
pub mod sources;
pub mod state;
pub mod sys;

#[cfg(test)]
mod layers {
    //! The layers of the crate doc, checked: a module may use `crate::X` only for an X of
    //! a lower layer (or its own).

    /// Top-level modules by layer, lowest first; modules of one layer may not use each
    /// other.
    const LAYERS: &[&[&str]] = &[
        &["pin", "iface", "sys", "packet", "caps"],
        &["maps", "state"],
        &["datapath"],
        &["reconcile"],
        &["sources"],
        &["inspect"],
        &["bench", "agent"],
        &["fuzz"],
        &["cli"],
    ];

    fn layer(m: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&m))
    }

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The crate's top-level modules a file names: `crate::X` paths and the items of
    /// `use crate::{X, Y::...}` groups.
    fn uses(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + 7..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names at depth 0 of the group.
                let mut depth = 0;
                let mut name = String::new();
                let mut at_start = true;
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => at_start = true,
                        c if at_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                        _ if at_start && !name.is_empty() => {
                            out.push(std::mem::take(&mut name));
                            at_start = false;
                        }
                        _ => {}
                    }
                }
                if !name.is_empty() {
                    out.push(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
        out
    }

    #[test]
    fn every_module_uses_only_lower_layers() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut problems = Vec::new();
        for f in all {
            let rel = f.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let Some(mine) = layer(&top) else {
                assert!(
                    ["lib", "main"].contains(&top.as_str()),
                    "{} is in no layer: add it to LAYERS and the crate doc",
                    rel.display()
                );
                continue;
            };
            let text = std::fs::read_to_string(&f).unwrap();
            for used in uses(&text) {
                if used == top {
                    continue;
                }
                match layer(&used) {
                    Some(l) if l < mine => {}
                    _ => problems.push(format!("{} uses crate::{used}", rel.display())),
                }
            }
        }
        assert!(
            problems.is_empty(),
            "layering broken:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_checker_sees_grouped_and_plain_paths() {
        let u = uses(
            "use crate::{\n    maps::{Maps, addr_of},\n    state::Origin,\n};\nlet x = crate::reconcile::all();",
        );
        assert_eq!(u, ["maps", "state", "reconcile"]);
    }
}
