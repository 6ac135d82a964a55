//! The CLI's source: entries added with `netpath peer|publish|policy add` to a running
//! datapath. They live in the pinned maps with origin `cli`, so they outlive the agent and
//! come back into the desired state at its next start.

use super::Part;
use crate::{reconcile::Observed, state::Origin};

/// The CLI's entries in the pinned maps, from what the agent observed of them.
pub fn live(o: &Observed) -> Part {
    let publish = o
        .publish()
        .into_iter()
        .filter(|p| p.origin == Origin::Cli)
        .map(|p| p.item)
        .collect();
    let rules = o
        .policy
        .rules
        .iter()
        .filter(|(_, _, origin)| Origin::from_map(*origin) == Origin::Cli)
        .map(|(id, r, _)| (Some(*id), r.clone()))
        .collect();
    Part {
        publish,
        rules,
        ..live_peers(o)
    }
}

/// The CLI's peers alone (what an etcd event's merge needs of the CLI).
pub fn live_peers(o: &Observed) -> Part {
    Part {
        peers: o.peers_of(Origin::Cli),
        ..Default::default()
    }
}
