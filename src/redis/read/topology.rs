//! What each primary says about itself, and which slots changed between
//! two such snapshots.
//!
//! A `SCAN` of one node is complete only for the slots that node held the
//! whole time. To know which those were, the reader asks every primary
//! before and after its scans for its own line of `CLUSTER NODES` (a node
//! knows its own state at once; other nodes learn it by gossip): its id,
//! its config epoch, the slots it serves and the slots it is migrating or
//! importing. A slot is *unsettled* when any of that differs for a node
//! claiming it, and is then read again slot by slot (`slot.rs`).
//!
//! The config epoch catches a slot that left a node and came back between
//! the snapshots (same slots, same id): a node that takes a slot over by
//! `CLUSTER SETSLOT ... NODE` raises its epoch unless it already holds the
//! cluster's highest, and after losing a slot to another node it no longer
//! does. Promoted replicas raise theirs too, and appear under a new address.

use std::collections::BTreeMap;

use crate::redis::slots::SLOTS;

/// A set of hash slots.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet(Box<[u64; SLOTS as usize / 64]>);

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet(Box::new([0; SLOTS as usize / 64]))
    }
}

impl SlotSet {
    pub fn insert(&mut self, slot: u16) {
        if slot < SLOTS {
            self.0[usize::from(slot / 64)] |= 1 << (slot % 64);
        }
    }

    pub fn contains(&self, slot: u16) -> bool {
        slot < SLOTS && self.0[usize::from(slot / 64)] & (1 << (slot % 64)) != 0
    }

    pub fn insert_range(&mut self, first: u16, last: u16) {
        for slot in first..=last.min(SLOTS - 1) {
            self.insert(slot);
        }
    }

    pub fn extend(&mut self, other: &SlotSet) {
        for (word, o) in self.0.iter_mut().zip(other.0.iter()) {
            *word |= o;
        }
    }

    /// The slots in exactly one of the two.
    pub fn symmetric_difference(&self, other: &SlotSet) -> SlotSet {
        let mut out = self.clone();
        for (word, o) in out.0.iter_mut().zip(other.0.iter()) {
            *word ^= o;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..SLOTS).filter(|s| self.contains(*s))
    }
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One line of `CLUSTER NODES`: `<id> <address> <flags> <primary>
/// <ping> <pong> <config epoch> <link> <slot>...`, each slot a number, a
/// range `first-last`, `[slot->-<id>]` (migrating to that node) or
/// `[slot-<-<id>]` (importing from it; both only on the node's own line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    /// `None` for a node without a usable address (`:0`).
    pub address: Option<Address>,
    pub myself: bool,
    pub config_epoch: u64,
    pub slots: SlotSet,
    pub migrating: Vec<(u16, String)>,
    pub importing: Vec<(u16, String)>,
}

impl NodeLine {
    pub fn parse(line: &str) -> Option<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields.get(1)?.split(['@', ',']).next().and_then(|a| {
            let (host, port) = a.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?)).filter(|(h, p): &Address| !h.is_empty() && *p != 0)
        });
        let mut node = NodeLine {
            id: fields.first()?.to_string(),
            address,
            myself: fields.get(2)?.split(',').any(|f| f == "myself"),
            config_epoch: fields.get(6)?.parse().ok()?,
            slots: SlotSet::default(),
            migrating: Vec::new(),
            importing: Vec::new(),
        };
        for token in fields.iter().skip(8) {
            if let Some(inner) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                if let Some((slot, to)) = inner.split_once("->-") {
                    node.migrating.push((slot.parse().ok()?, to.to_string()));
                } else if let Some((slot, from)) = inner.split_once("-<-") {
                    node.importing.push((slot.parse().ok()?, from.to_string()));
                }
            } else if let Some((first, last)) = token.split_once('-') {
                node.slots.insert_range(first.parse().ok()?, last.parse().ok()?);
            } else {
                node.slots.insert(token.parse().ok()?);
            }
        }
        Some(node)
    }
}

/// A `CLUSTER NODES` reply: every node as the answering one sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNodes(pub Vec<NodeLine>);

impl ClusterNodes {
    pub fn parse(text: &str) -> ClusterNodes {
        ClusterNodes(text.lines().filter_map(NodeLine::parse).collect())
    }

    /// The answering node's own line.
    pub fn myself(&self) -> Option<&NodeLine> {
        self.0.iter().find(|n| n.myself)
    }

    pub fn address_of(&self, id: &str) -> Option<&Address> {
        self.0.iter().find(|n| n.id == id)?.address.as_ref()
    }

    /// The node serving `slot`, as the answering node sees it.
    pub fn owner_of(&self, slot: u16) -> Option<&NodeLine> {
        self.0.iter().find(|n| n.slots.contains(slot))
    }
}

/// One primary's own account of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub id: String,
    pub config_epoch: u64,
    /// The slots it serves.
    pub slots: SlotSet,
    /// The slots it is migrating away or importing.
    pub moving: SlotSet,
}

impl NodeReport {
    /// The `myself` line of a `CLUSTER NODES` reply.
    pub fn parse(cluster_nodes: &str) -> Option<NodeReport> {
        let nodes = ClusterNodes::parse(cluster_nodes);
        let me = nodes.myself()?;
        let mut moving = SlotSet::default();
        me.migrating.iter().chain(&me.importing).for_each(|(slot, _)| moving.insert(*slot));
        Some(NodeReport { id: me.id.clone(), config_epoch: me.config_epoch, slots: me.slots.clone(), moving })
    }
}

/// A primary's address as redis-rs names it: host and port.
pub type Address = (String, u16);

/// What one primary looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The slots `CLUSTER SLOTS` (from any node) gave it.
    pub served: SlotSet,
    /// Its own report; `None` when it did not answer.
    pub report: Option<NodeReport>,
}

impl NodeView {
    /// Every slot this node may hold keys of.
    fn touched(&self) -> SlotSet {
        let mut slots = self.served.clone();
        if let Some(report) = &self.report {
            slots.extend(&report.slots);
            slots.extend(&report.moving);
        }
        slots
    }
}

/// Every primary at one moment, by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub nodes: BTreeMap<Address, NodeView>,
}

impl Topology {
    /// The node that serves `slot` by its own account, else by
    /// `CLUSTER SLOTS`'s.
    pub fn owner_of(&self, slot: u16) -> Option<&Address> {
        let claims = |view: &NodeView| view.report.as_ref().is_some_and(|r| r.slots.contains(slot));
        self.nodes
            .iter()
            .find(|(_, view)| claims(view))
            .or_else(|| self.nodes.iter().find(|(_, view)| view.served.contains(slot)))
            .map(|(address, _)| address)
    }

    /// The slots whose keys a scan of each node between `self` and `after`
    /// may have missed: those of a node that changed id or config epoch,
    /// appeared, vanished or did not answer; those a node gained or lost;
    /// those migrating or importing at either moment; and those no node,
    /// or more than one, claims.
    pub fn unsettled(&self, after: &Topology) -> SlotSet {
        let mut out = SlotSet::default();
        let addresses: std::collections::BTreeSet<&Address> = self.nodes.keys().chain(after.nodes.keys()).collect();
        for address in addresses {
            let (before, now) = (self.nodes.get(address), after.nodes.get(address));
            match (before.and_then(|v| v.report.as_ref()), now.and_then(|v| v.report.as_ref())) {
                (Some(b), Some(a)) if b.id == a.id && b.config_epoch == a.config_epoch => {
                    out.extend(&b.slots.symmetric_difference(&a.slots));
                    out.extend(&b.moving);
                    out.extend(&a.moving);
                    // Both say the same; CLUSTER SLOTS may still lag.
                    out.extend(&before.map(|v| v.served.clone()).unwrap_or_default().symmetric_difference(&b.slots));
                    out.extend(&now.map(|v| v.served.clone()).unwrap_or_default().symmetric_difference(&a.slots));
                }
                _ => {
                    for view in [before, now].into_iter().flatten() {
                        out.extend(&view.touched());
                    }
                }
            }
        }
        for topology in [self, after] {
            let mut claimed = SlotSet::default();
            let mut twice = SlotSet::default();
            for report in topology.nodes.values().filter_map(|v| v.report.as_ref()) {
                for slot in report.slots.iter() {
                    if claimed.contains(slot) {
                        twice.insert(slot);
                    }
                    claimed.insert(slot);
                }
            }
            out.extend(&twice);
            let mut all = SlotSet::default();
            all.insert_range(0, SLOTS - 1);
            out.extend(&all.symmetric_difference(&claimed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,,shard-id=x slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,,shard-id=y master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,,shard-id=z myself,master - 0 0 7 connected 0-5460 10923 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77-<-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";

    fn slots(list: &[u16]) -> SlotSet {
        let mut set = SlotSet::default();
        list.iter().for_each(|s| set.insert(*s));
        set
    }

    #[test]
    fn reads_its_own_line() {
        let report = NodeReport::parse(NODES).expect("a myself line");
        assert_eq!(report.id, "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca");
        assert_eq!(report.config_epoch, 7);
        assert_eq!(report.slots.len(), 5462);
        assert!(report.slots.contains(0) && report.slots.contains(5460) && report.slots.contains(10923));
        assert!(!report.slots.contains(5461));
        assert_eq!(report.moving, slots(&[77, 93]));
        assert_eq!(NodeReport::parse("garbage"), None);
    }

    #[test]
    fn reads_every_line() {
        let nodes = ClusterNodes::parse(NODES);
        assert_eq!(nodes.0.len(), 3);
        let me = nodes.myself().expect("myself");
        assert_eq!(me.address, Some(("127.0.0.1".to_string(), 30001)));
        assert_eq!(me.migrating, vec![(93, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".to_string())]);
        assert_eq!(me.importing, vec![(77, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".to_string())]);
        assert_eq!(
            nodes.address_of("67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1"),
            Some(&("127.0.0.1".to_string(), 30002))
        );
        assert_eq!(nodes.owner_of(6000).map(|n| n.id.as_str()), Some("67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1"));
        assert_eq!(nodes.owner_of(93).map(|n| n.myself), Some(true), "a migrating slot is still the source's");
        let noaddr = NodeLine::parse("abc :0@0 master,noaddr - 0 0 1 disconnected").expect("parses");
        assert_eq!(noaddr.address, None);
    }

    fn node(id: &str, epoch: u64, owned: &[u16], moving: &[u16]) -> NodeView {
        let report = NodeReport { id: id.into(), config_epoch: epoch, slots: slots(owned), moving: slots(moving) };
        NodeView { served: report.slots.clone(), report: Some(report) }
    }

    /// Three nodes; all slots beyond 2 belong to "c", so that only the
    /// changes under test are unsettled.
    fn topology(a: NodeView, b: NodeView, c_epoch: u64) -> Topology {
        let mut rest = SlotSet::default();
        rest.insert_range(3, SLOTS - 1);
        let c = NodeReport { id: "c".into(), config_epoch: c_epoch, slots: rest.clone(), moving: SlotSet::default() };
        let mut nodes = BTreeMap::new();
        nodes.insert(("h".to_string(), 1), a);
        nodes.insert(("h".to_string(), 2), b);
        nodes.insert(("h".to_string(), 3), NodeView { served: rest, report: Some(c) });
        Topology { nodes }
    }

    #[test]
    fn nothing_is_unsettled_when_nothing_changed() {
        let t = topology(node("a", 1, &[0, 1], &[]), node("b", 2, &[2], &[]), 3);
        assert!(t.unsettled(&t.clone()).is_empty());
        assert_eq!(t.owner_of(1), Some(&("h".to_string(), 1)));
    }

    #[test]
    fn moved_moving_and_returned_slots_are_unsettled() {
        let before = topology(node("a", 1, &[0, 1], &[]), node("b", 2, &[2], &[]), 3);
        // Slot 1 moved from a to b.
        let moved = topology(node("a", 1, &[0], &[]), node("b", 4, &[1, 2], &[]), 3);
        assert_eq!(before.unsettled(&moved), slots(&[1, 2]), "b's epoch rose: all of b's");
        let moved_same_epoch = topology(node("a", 1, &[0], &[]), node("b", 2, &[1, 2], &[]), 3);
        assert_eq!(before.unsettled(&moved_same_epoch), slots(&[1]));
        // Slot 1 migrating at the end.
        let migrating = topology(node("a", 1, &[0, 1], &[1]), node("b", 2, &[2], &[1]), 3);
        assert_eq!(before.unsettled(&migrating), slots(&[1]));
        assert_eq!(migrating.unsettled(&before), slots(&[1]), "or at the start");
        // Slot 1 went to b and came back: a's epoch rose.
        let returned = topology(node("a", 5, &[0, 1], &[]), node("b", 4, &[2], &[]), 3);
        assert_eq!(before.unsettled(&returned), slots(&[0, 1, 2]));
    }

    #[test]
    fn failovers_silence_and_gaps_are_unsettled() {
        let before = topology(node("a", 1, &[0, 1], &[]), node("b", 2, &[2], &[]), 3);
        // b failed over to a replica at another address.
        let mut failed_over = before.clone();
        let b = failed_over.nodes.remove(&("h".to_string(), 2)).expect("b");
        failed_over.nodes.insert(
            ("h".to_string(), 9),
            NodeView { report: Some(NodeReport { id: "b2".into(), ..b.report.clone().expect("report") }), ..b },
        );
        assert_eq!(before.unsettled(&failed_over), slots(&[2]));
        // a did not answer afterwards.
        let mut silent = before.clone();
        silent.nodes.get_mut(&("h".to_string(), 1)).expect("a").report = None;
        assert_eq!(before.unsettled(&silent), slots(&[0, 1]));
        // Nobody claims slot 2; two nodes claim slot 0.
        let gap = topology(node("a", 1, &[0, 1], &[]), node("b", 2, &[0], &[]), 3);
        assert_eq!(before.unsettled(&gap), slots(&[0, 2]));
    }
}
