//! The config file as written: one struct per section, deserialized with unknown keys
//! refused, and the defaults of the keys that have one. What the values mean and which
//! are valid is checked in the parent module; docs/configuration.md documents every key,
//! and a test here holds the two together.

use serde::Deserialize;

use crate::state::{
    Conntrack, Mode, Monitor, Proto, XdpMode,
    policy::{Action, PortSpec, RuleProto},
};

/// The file as written. Unknown keys are refused (a typo must not be silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) host: HostFile,
    #[serde(default, rename = "peer")]
    pub(super) peers: Vec<PeerFile>,
    #[serde(default, rename = "publish")]
    pub(super) publish: Vec<PublishFile>,
    #[serde(default)]
    pub(super) conntrack: Conntrack,
    #[serde(default, rename = "group")]
    pub(super) groups: Vec<GroupFile>,
    #[serde(default, rename = "policy")]
    pub(super) policies: Vec<PolicyFile>,
    #[serde(default)]
    pub(super) monitor: Monitor,
    #[serde(default)]
    pub(super) metrics: MetricsFile,
    pub(super) etcd: Option<EtcdFile>,
    pub(super) docker: Option<DockerFile>,
}

/// `[docker]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DockerFile {
    pub(super) socket: Option<String>,
    pub(super) plugin: Option<String>,
}

/// `[etcd]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EtcdFile {
    pub(super) endpoints: Vec<String>,
    pub(super) prefix: Option<String>,
    pub(super) lease_ttl: Option<u64>,
    pub(super) address_grace: Option<u64>,
    pub(super) peer_grace: Option<u64>,
    pub(super) ca: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) subnet_file: Option<String>,
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFile {
    /// Address and port to serve Prometheus metrics on, e.g. "127.0.0.1:9464".
    pub(super) listen: Option<String>,
}

/// A named group as written: `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupFile {
    pub(super) name: String,
    pub(super) cidrs: Vec<String>,
}

/// A rule as written: `[[policy]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) from: String,
    pub(super) to: String,
    #[serde(default = "default_rule_proto")]
    pub(super) proto: RuleProto,
    pub(super) port: Option<PortSpec>,
    pub(super) action: Action,
}

pub(super) fn default_rule_proto() -> RuleProto {
    RuleProto::Any
}

/// A published port as written: `[[publish]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishFile {
    pub(super) proto: Proto,
    pub(super) host_port: u16,
    pub(super) container: String,
    pub(super) port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostFile {
    pub(super) name: String,
    pub(super) uplink: String,
    pub(super) bridge: String,
    /// Left out with `[etcd]`: leased from the cluster's range.
    pub(super) subnet: Option<String>,
    pub(super) address: Option<String>,
    #[serde(default = "default_vni")]
    pub(super) vni: u32,
    #[serde(default = "default_xdp")]
    pub(super) xdp: XdpMode,
    #[serde(default = "default_vxlan_port")]
    pub(super) vxlan_port: u16,
    /// MAC that peers put as inner destination when they encapsulate to this host.
    pub(super) vtep_mac: Option<String>,
    #[serde(default)]
    pub(super) masquerade: bool,
    pub(super) masquerade_ports: Option<String>,
    /// What policy does with new flows that no rule matches.
    #[serde(default = "default_action")]
    pub(super) default_action: Action,
    /// Reject answers per second, per CPU.
    #[serde(default = "default_reject_rate")]
    pub(super) reject_rate: u32,
}

pub(super) fn default_action() -> Action {
    Action::Allow
}

pub(super) fn default_reject_rate() -> u32 {
    crate::state::policy::REJECT_RATE
}

pub(super) fn default_vxlan_port() -> u16 {
    netpath_common::VXLAN_PORT
}

pub(super) fn default_vni() -> u32 {
    1
}

pub(super) fn default_xdp() -> XdpMode {
    XdpMode::Off
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerFile {
    pub(super) name: String,
    pub(super) subnet: String,
    pub(super) underlay: String,
    pub(super) mode: Mode,
    /// The peer's VTEP MAC (a Linux vxlan device's address); default: netpath's own
    /// scheme, 02:4e:<underlay address>.
    pub(super) vtep_mac: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::{Serialize, de::DeserializeOwned};

    use super::*;
    use crate::{
        iface::fake::Fake,
        sources::file::Config,
        state::{self, MASQUERADE_PORTS},
    };

    /// docs/configuration.md: one `## `[section]`` heading per section, a table row per
    /// key (`| `key` | default | range | what |`), and the complete example.
    struct Reference {
        /// section -> key -> its default as documented (every row also has a range)
        sections: BTreeMap<String, BTreeMap<String, String>>,
        example: String,
    }

    fn reference() -> Reference {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut sections = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## `") {
                let name = h
                    .trim_end_matches('`')
                    .trim_matches(|c| c == '[' || c == ']');
                current = Some(name.to_owned());
                sections.insert(name.to_owned(), BTreeMap::new());
            } else if line.starts_with("## ") {
                current = None;
            } else if let (Some(s), Some(row)) = (&current, line.strip_prefix("| `")) {
                let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
                assert_eq!(cells.len(), 4, "[{s}]: a row of 4 cells: {line}");
                let key = cells[0].trim_end_matches('`');
                for (what, cell) in [("default", cells[1]), ("range", cells[2])] {
                    assert!(!cell.is_empty(), "[{s}].{key}: no {what} in the reference");
                }
                let old = sections
                    .get_mut(s)
                    .unwrap()
                    .insert(key.to_owned(), cells[1].to_owned());
                assert!(old.is_none(), "[{s}].{key} documented twice");
            }
        }
        let example = text
            .split("## A complete example")
            .nth(1)
            .and_then(first_toml)
            .expect("the complete example, a ```toml block under its heading");
        Reference { sections, example }
    }

    /// The first ```toml block of a Markdown text, its lines unindented (a block in a
    /// list item is indented).
    fn first_toml(text: &str) -> Option<String> {
        let block = text.split("```toml\n").nth(1)?.split("```").next()?;
        Some(
            block
                .lines()
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// The keys `T` accepts, as its deserializer names them when it refuses an unknown
    /// one ("unknown field `x`, expected one of `a`, `b`"): the parser's own list.
    fn accepted<T: DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
        let err = toml::from_str::<T>("zz_not_a_key = 1")
            .expect_err("an unknown key is refused")
            .to_string();
        let (_, expected) = err
            .split_once("expected")
            .unwrap_or_else(|| panic!("no list of keys in {err:?}"));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// Whether `T` refuses `table` without `key`.
    fn required<T: DeserializeOwned + std::fmt::Debug>(table: &toml::Table, key: &str) -> bool {
        let mut t = table.clone();
        t.remove(key);
        match T::deserialize(toml::Value::Table(t)) {
            Ok(_) => false,
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("missing field"), "[{key}] left out: {e}");
                true
            }
        }
    }

    /// `v` as TOML writes it, as the reference shows a literal default (`"off"`, `60`).
    fn literal(v: impl Serialize) -> String {
        let v = toml::Value::try_from(v).unwrap();
        v.to_string()
    }

    /// The defaults the code gives keys left out, as TOML literals.
    fn code_defaults() -> BTreeMap<(&'static str, String), String> {
        let mut d = BTreeMap::new();
        let mut put = |s: &'static str, k: &str, v: String| {
            d.insert((s, k.to_owned()), v);
        };
        for (section, table) in [
            (
                "conntrack",
                toml::Table::try_from(Conntrack::default()).unwrap(),
            ),
            (
                "monitor",
                toml::Table::try_from(Monitor::default()).unwrap(),
            ),
        ] {
            for (k, v) in table {
                put(section, &k, v.to_string());
            }
        }
        put("host", "vni", literal(default_vni()));
        put("host", "xdp", literal(default_xdp()));
        put("host", "vxlan_port", literal(default_vxlan_port()));
        put("host", "masquerade", literal(bool::default()));
        let (a, b) = MASQUERADE_PORTS;
        put("host", "masquerade_ports", literal(format!("{a}-{b}")));
        put("host", "default_action", literal(default_action()));
        put("host", "reject_rate", literal(default_reject_rate()));
        put("policy", "proto", literal(default_rule_proto()));
        put("etcd", "prefix", literal(state::ETCD_PREFIX));
        put("etcd", "lease_ttl", literal(state::ETCD_LEASE_TTL));
        put("etcd", "address_grace", literal(state::ETCD_ADDRESS_GRACE));
        put("etcd", "peer_grace", literal(state::ETCD_PEER_GRACE));
        put("etcd", "subnet_file", literal(state::ETCD_SUBNET_FILE));
        put("docker", "socket", literal(state::DOCKER_SOCKET));
        put("docker", "plugin", literal(state::DOCKER_PLUGIN));
        d
    }

    #[test]
    fn the_reference_documents_every_key() {
        let r = reference();
        let example: toml::Table = toml::from_str(&r.example).expect("the example is TOML");
        // The example's table of a section (of an array of them, the one with most keys).
        let table_of = |s: &str| -> toml::Table {
            match example.get(s) {
                Some(toml::Value::Table(t)) => t.clone(),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_table())
                    .max_by_key(|t| t.len())
                    .cloned()
                    .unwrap_or_default(),
                _ => toml::Table::new(),
            }
        };
        /// A section's keys: all it accepts, and those it requires.
        type Keys = (BTreeSet<String>, BTreeSet<String>);
        fn keys_of<T: DeserializeOwned + std::fmt::Debug>(t: &toml::Table) -> Keys {
            let all = accepted::<T>();
            let req = all
                .iter()
                .filter(|k| t.contains_key(*k) && required::<T>(t, k))
                .cloned()
                .collect();
            (all, req)
        }
        let code: Vec<(&str, Keys)> = vec![
            ("host", keys_of::<HostFile>(&table_of("host"))),
            ("peer", keys_of::<PeerFile>(&table_of("peer"))),
            ("publish", keys_of::<PublishFile>(&table_of("publish"))),
            ("conntrack", keys_of::<Conntrack>(&table_of("conntrack"))),
            ("group", keys_of::<GroupFile>(&table_of("group"))),
            ("policy", keys_of::<PolicyFile>(&table_of("policy"))),
            ("monitor", keys_of::<Monitor>(&table_of("monitor"))),
            ("metrics", keys_of::<MetricsFile>(&table_of("metrics"))),
            ("etcd", keys_of::<EtcdFile>(&table_of("etcd"))),
            ("docker", keys_of::<DockerFile>(&table_of("docker"))),
        ];
        let sections: BTreeSet<String> = code.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(
            sections,
            accepted::<File>(),
            "a section of the file is not checked here"
        );
        assert_eq!(
            r.sections.keys().cloned().collect::<BTreeSet<_>>(),
            sections,
            "the reference's sections are not the parser's"
        );
        let defaults = code_defaults();
        for (s, (all, req)) in &code {
            let doc = &r.sections[*s];
            let documented: BTreeSet<String> = doc.keys().cloned().collect();
            let undocumented: Vec<_> = all.difference(&documented).collect();
            let unknown: Vec<_> = documented.difference(all).collect();
            assert!(
                undocumented.is_empty(),
                "[{s}]: {undocumented:?} not in docs/configuration.md"
            );
            assert!(
                unknown.is_empty(),
                "[{s}]: {unknown:?} documented, but the parser refuses them"
            );
            for (k, default) in doc {
                let says_required = default == "required";
                assert_eq!(
                    says_required,
                    req.contains(k),
                    "[{s}].{k}: the reference says {default:?}, the parser {} it",
                    if req.contains(k) {
                        "requires"
                    } else {
                        "does not require"
                    }
                );
                // A default written as one literal: `60`, `"off"`.
                let literal = default
                    .strip_prefix('`')
                    .and_then(|d| d.strip_suffix('`'))
                    .filter(|d| !d.contains('`'));
                match (defaults.get(&(*s, k.clone())), literal) {
                    (Some(code), Some(doc)) => {
                        assert_eq!(
                            doc, code,
                            "[{s}].{k}: the default documented is not the code's"
                        )
                    }
                    (Some(code), None) => {
                        panic!(
                            "[{s}].{k}: the code's default is {code}, the reference says {default:?}"
                        )
                    }
                    (None, Some(doc)) => {
                        panic!("[{s}].{k}: documented default {doc}, but the code gives it none")
                    }
                    (None, None) => {}
                }
            }
            // The example is complete: every key, but the TLS files it cannot name here.
            let shown: BTreeSet<String> = match example.get(*s) {
                Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_table())
                    .flat_map(|t| t.keys().cloned())
                    .collect(),
                _ => BTreeSet::new(),
            };
            for k in all {
                assert!(
                    shown.contains(k)
                        || (*s == "etcd" && ["ca", "cert", "key"].contains(&k.as_str())),
                    "[{s}].{k} is missing from the complete example"
                );
            }
        }
        let sys =
            Fake::new()
                .with("eth0", 2, &["198.18.0.11/24"])
                .with("br0", 3, &["10.244.11.1/24"]);
        if let Err(p) = Config::parse(&r.example, &sys) {
            panic!(
                "the reference's example does not validate:\n{}",
                p.join("\n")
            );
        }
        // The config the package installs and the README's, on a host with their
        // interfaces.
        let sys =
            Fake::new()
                .with("eth0", 2, &["192.0.2.11/24"])
                .with("docker0", 3, &["10.244.1.1/24"]);
        let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/netpath.toml");
        let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme_toml = first_toml(&std::fs::read_to_string(readme).unwrap())
            .expect("the README's config, a ```toml block");
        for (path, text) in [
            (dist, std::fs::read_to_string(dist).unwrap()),
            (readme, readme_toml),
        ] {
            if let Err(p) = Config::parse(&text, &sys) {
                panic!("{path}'s config does not validate:\n{}", p.join("\n"));
            }
        }
    }

    #[test]
    fn the_accepted_keys_are_read_from_the_parser() {
        // The list comes from serde's message; if that ever changed shape, the test above
        // would see no key at all rather than fail on a real one.
        let host = accepted::<HostFile>();
        assert!(
            host.contains("uplink") && host.contains("reject_rate"),
            "{host:?}"
        );
        assert_eq!(
            accepted::<DockerFile>(),
            BTreeSet::from(["socket".to_owned(), "plugin".to_owned()])
        );
    }
}
