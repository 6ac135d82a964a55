//! The CLI's source: entries added with `netpath peer|publish|policy add` to a running
//! datapath. They live in the pinned maps with origin `cli`, so they outlive the agent and
//! come back into the desired state at its next start.

use anyhow::Result;

use super::Part;
use crate::{maps::Maps, reconcile, state::Origin};

/// The CLI's entries in the pinned maps.
pub fn live(maps: &Maps) -> Result<Part> {
    let peers = reconcile::peers::observe(maps)?
        .into_iter()
        .filter(|(_, p)| p.origin == Origin::Cli)
        .map(|(_, p)| p.item)
        .collect();
    let publish = reconcile::publish::observe(maps)?
        .into_iter()
        .filter(|p| p.origin == Origin::Cli)
        .map(|p| p.item)
        .collect();
    let rules = reconcile::policy::installed(maps)?
        .rules
        .into_iter()
        .filter(|(_, _, o)| Origin::from_map(*o) == Origin::Cli)
        .map(|(id, r, _)| (Some(id), r))
        .collect();
    Ok(Part {
        peers,
        publish,
        rules,
    })
}
