//! Every key of one hash slot, wherever the slot is.
//!
//! On the node the reader believes owns the slot, one transaction
//! (`MULTI`, `CLUSTER NODES`, `CLUSTER GETKEYSINSLOT`, `EXEC`) returns, as
//! of one instant, the node's own state and the slot's keys there:
//!
//! - it serves the slot and is not migrating it: the list is all of the
//!   slot;
//! - it serves the slot and is migrating it to another node: the keys are
//!   split between the two. The target is listed after the source: keys
//!   only move from source to target, so a key not yet moved when the
//!   source was listed is in that list, and one moved before it is on the
//!   target when the target is listed;
//! - it does not serve the slot: ask the node its reply names as owner.
//!
//! The state comes back as data, not as `MOVED`/`ASK` errors: redis-rs
//! follows those by itself, and following an `ASK` to the target with
//! `ASKING` would list the target's half of the slot as if it were all.
//! Anything else (a node down, `CLUSTERDOWN`, an owner nobody names) is
//! for the caller to retry, in its next round (`read.rs`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError, Value};

use super::topology::{Address, ClusterNodes};
use super::RegionReader;
use crate::redis::error;

/// `GETKEYSINSLOT`'s count: Redis 7 answers with at most the slot's keys.
const ALL_KEYS: i64 = i32::MAX as i64;
/// Owners followed from one node's reply to the next in one attempt.
const MAX_HOPS: usize = 4;

fn by_address((host, port): &Address) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port }
}

/// What the node asked said about the slot.
enum Answer {
    /// Every key of the slot.
    Keys(Vec<Value>),
    /// Another node serves it.
    Elsewhere(Address),
    /// Not enough to go on; the message says why.
    Unclear(String),
}

/// Why a slot was not read.
pub(super) enum Unread {
    /// Worth another round (a node down, an owner nobody names).
    Transient(String),
    /// It would fail the same way again (a denied command).
    Permanent(String),
}

impl RegionReader {
    /// Every key of `slot` that starts with `prefix`: asks `owner`, then
    /// whichever node the answers name, a few hops at most. A node that
    /// fails is added to `unreachable` and not asked again by this round's
    /// other slots (a dead primary would hold each for a response timeout).
    pub(super) async fn slot_keys(
        &self,
        slot: u16,
        owner: Option<Address>,
        prefix: &str,
        unreachable: &Mutex<BTreeSet<Address>>,
    ) -> Result<Vec<String>, Unread> {
        let mut owner = owner.ok_or_else(|| Unread::Transient(format!("no node serves slot {slot}")))?;
        for _ in 0..MAX_HOPS {
            if unreachable.lock().expect("unreachable set").contains(&owner) {
                return Err(Unread::Transient(format!("{}:{} did not answer", owner.0, owner.1)));
            }
            match self.ask(slot, &owner).await {
                Ok(Answer::Keys(keys)) => return Ok(matching(keys, prefix)),
                Ok(Answer::Elsewhere(next)) if next != owner => owner = next,
                Ok(Answer::Elsewhere(_)) => break,
                Ok(Answer::Unclear(message)) => return Err(Unread::Transient(message)),
                Err(e) if matches!(error::classify(&e), error::Retry::Permanent(_)) => {
                    return Err(Unread::Permanent(error::describe(&e)))
                }
                Err(e) => {
                    unreachable.lock().expect("unreachable set").insert(owner.clone());
                    return Err(Unread::Transient(format!("{}:{}: {e}", owner.0, owner.1)));
                }
            }
        }
        Err(Unread::Transient(format!("the owner of slot {slot} kept moving (last asked {}:{})", owner.0, owner.1)))
    }

    /// The node's state and the slot's keys there, in one transaction; the
    /// target's keys too while the node migrates the slot.
    async fn ask(&self, slot: u16, address: &Address) -> Result<Answer, RedisError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("MULTI").cmd("CLUSTER").arg("NODES").cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(ALL_KEYS);
        pipeline.cmd("EXEC");
        let (_, mut connection) = self.handle.get();
        let replies = connection.route_pipeline(pipeline, 0, 4, by_address(address)).await?;
        let (nodes, mut keys) = match replies.last() {
            Some(Value::Array(results)) => match results.as_slice() {
                [nodes, Value::Array(keys)] => {
                    (redis::from_redis_value::<String>(nodes.clone()).map_err(RedisError::from)?, keys.clone())
                }
                other => return Err(unexpected(format!("{other:?}"))),
            },
            Some(Value::ServerError(e)) => return Err(e.clone().into()),
            other => return Err(unexpected(format!("{other:?}"))),
        };
        let nodes = ClusterNodes::parse(&nodes);
        let Some(me) = nodes.myself() else { return Ok(Answer::Unclear("CLUSTER NODES without myself".into())) };
        if !me.slots.contains(slot) {
            return Ok(match nodes.owner_of(slot).and_then(|n| n.address.clone()) {
                Some(owner) => Answer::Elsewhere(owner),
                None => Answer::Unclear(format!("{}:{} knows no owner of the slot", address.0, address.1)),
            });
        }
        if let Some((_, target)) = me.migrating.iter().find(|(s, _)| *s == slot) {
            let Some(target) = nodes.address_of(target) else {
                return Ok(Answer::Unclear(format!("migrating to {target}, whose address is unknown")));
            };
            keys.extend(self.keys_in_slot(slot, target).await?);
        }
        Ok(Answer::Keys(keys))
    }

    async fn keys_in_slot(&self, slot: u16, address: &Address) -> Result<Vec<Value>, RedisError> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("GETKEYSINSLOT").arg(slot).arg(ALL_KEYS);
        let (_, mut connection) = self.handle.get();
        match connection.route_command(cmd, RoutingInfo::SingleNode(by_address(address))).await? {
            Value::Array(keys) => Ok(keys),
            other => Err(unexpected(format!("{other:?}"))),
        }
    }
}

fn unexpected(reply: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "unexpected reply listing a slot's keys", reply))
}

/// The keys starting with `prefix`, as text (a key that is not UTF-8 is no
/// entry of a region: regionflow writes UTF-8 keys).
fn matching(keys: Vec<Value>, prefix: &str) -> Vec<String> {
    keys.into_iter()
        .filter_map(|key| match key {
            Value::BulkString(bytes) if bytes.starts_with(prefix.as_bytes()) => String::from_utf8(bytes).ok(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_under_the_prefix_are_kept() {
        let keys = ["rf:views:a:1", "rf:other:a:1", "rf:views:b:2"].map(|k| Value::BulkString(k.into())).to_vec();
        let mut with_bad = keys.clone();
        with_bad.push(Value::BulkString(b"rf:views:\xff".to_vec()));
        assert_eq!(matching(with_bad, "rf:views:"), vec!["rf:views:a:1", "rf:views:b:2"]);
    }
}
