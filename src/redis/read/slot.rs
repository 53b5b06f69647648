//! Every key of one hash slot, wherever the slot is.
//!
//! On the node the reader believes owns the slot, one transaction
//! (`MULTI`, `EXISTS <probe>`, `CLUSTER GETKEYSINSLOT`, `EXEC`) lists the
//! slot's keys. The probe is a key of that slot that nothing writes, so
//! the node answers it only if it serves the slot and is not migrating it:
//! then the list, taken in the same atomic step, is all of the slot. Else
//! the node redirects the probe:
//!
//! - `MOVED <node>`: another node owns the slot; ask that one.
//! - `ASK <node>`: the slot is migrating to `<node>`, its keys split
//!   between the two. The source is listed first, then the target: keys
//!   only move from source to target, so a key not yet moved when the
//!   source was listed is in that list, and one moved before it is on the
//!   target when the target is listed.
//!
//! Anything else (a node down, `CLUSTERDOWN`, `TRYAGAIN`) is retried with
//! backoff, asking `CLUSTER SLOTS` for the owner again, until the deadline.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use super::topology::Address;
use super::{ReadError, RegionReader};
use crate::redis::slots::{key_slot, SLOTS};

/// `GETKEYSINSLOT`'s count: Redis 7 answers with at most the slot's keys.
const ALL_KEYS: i64 = i32::MAX as i64;
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A key per slot, named so that nothing else uses it.
fn probe_key(slot: u16) -> &'static str {
    static PROBES: OnceLock<Vec<String>> = OnceLock::new();
    let probes = PROBES.get_or_init(|| {
        let mut probes = vec![String::new(); usize::from(SLOTS)];
        let mut missing = probes.len();
        for n in 0u64.. {
            let key = format!("regionflow:slot-probe:{n}");
            let probe = &mut probes[usize::from(key_slot(key.as_bytes()))];
            if probe.is_empty() {
                *probe = key;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        probes
    });
    &probes[usize::from(slot)]
}

fn by_address((host, port): &Address) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port }
}

/// `host:port` from a redirect, as redis-rs names nodes.
fn parse_address(address: &str) -> Option<Address> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// What the owner said about the slot.
enum Answer {
    /// Every key of the slot.
    Keys(Vec<Value>),
    Moved(Address),
    /// Migrating to this node.
    Ask(Address),
    Failed(RedisError),
}

/// The redirect in a reply, if it is one.
fn redirect(value: &Value) -> Option<Answer> {
    let Value::ServerError(e) = value else { return None };
    let e = RedisError::from(e.clone());
    let (address, _) = e.redirect_node()?;
    let address = parse_address(address)?;
    Some(match e.kind() {
        ErrorKind::Server(ServerErrorKind::Ask) => Answer::Ask(address),
        _ => Answer::Moved(address),
    })
}

impl RegionReader {
    /// Every key of `slot` that starts with `prefix`, asking `owner` first.
    pub(super) async fn slot_keys(
        &self,
        slot: u16,
        owner: Option<Address>,
        prefix: &str,
    ) -> Result<Vec<String>, ReadError> {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut owner = owner;
        let mut last_error = String::from("no node serves the slot");
        loop {
            if let Some(address) = owner.clone() {
                match self.ask_owner(slot, &address).await {
                    Answer::Keys(keys) => return Ok(matching(keys, prefix)),
                    Answer::Moved(to) if to != address => {
                        owner = Some(to);
                        continue;
                    }
                    Answer::Moved(_) => {
                        last_error = format!("{}:{} redirects slot {slot} to itself", address.0, address.1)
                    }
                    Answer::Ask(target) => match self.migrating_keys(slot, &address, &target).await {
                        Ok(keys) => return Ok(matching(keys, prefix)),
                        Err(e) => last_error = e.to_string(),
                    },
                    Answer::Failed(e) => {
                        if matches!(crate::redis::error::classify(&e), crate::redis::error::Retry::Permanent(_)) {
                            return Err(self.slot_failed(slot, started, crate::redis::error::describe(&e)));
                        }
                        last_error = e.to_string();
                    }
                }
            }
            if started.elapsed() >= self.deadline {
                return Err(self.slot_failed(slot, started, last_error));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            owner = self.owner_by_cluster_slots(slot).await;
        }
    }

    fn slot_failed(&self, slot: u16, started: Instant, message: String) -> ReadError {
        ReadError::Failed { what: format!("listing the keys of slot {slot}"), elapsed: started.elapsed(), message }
    }

    /// The atomic probe-and-list transaction on `address`.
    async fn ask_owner(&self, slot: u16, address: &Address) -> Answer {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("MULTI")
            .cmd("EXISTS")
            .arg(probe_key(slot))
            .cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(ALL_KEYS)
            .cmd("EXEC");
        let (_, mut connection) = self.handle.get();
        let replies = match connection.route_pipeline(pipeline, 0, 4, by_address(address)).await {
            Ok(replies) => replies,
            Err(e) => return Answer::Failed(e),
        };
        if let Some(answer) = replies.iter().find_map(redirect) {
            return answer;
        }
        match replies.last() {
            Some(Value::Array(results)) => match results.as_slice() {
                [_, Value::Array(keys)] => Answer::Keys(keys.clone()),
                other => Answer::Failed(unexpected(format!("{other:?}"))),
            },
            Some(Value::ServerError(e)) => Answer::Failed(e.clone().into()),
            other => Answer::Failed(unexpected(format!("{other:?}"))),
        }
    }

    /// The keys of a migrating slot: the source's, then the target's.
    async fn migrating_keys(&self, slot: u16, source: &Address, target: &Address) -> Result<Vec<Value>, RedisError> {
        let mut keys = self.keys_in_slot(slot, source).await?;
        keys.extend(self.keys_in_slot(slot, target).await?);
        Ok(keys)
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

    /// The slot's primary by a fresh `CLUSTER SLOTS`.
    async fn owner_by_cluster_slots(&self, slot: u16) -> Option<Address> {
        let map = self.cluster_slots().await.ok()?;
        let index = map.primary_of_slot(slot)?;
        let (host, port) = map.address(index);
        Some((host.to_string(), port))
    }
}

fn unexpected(reply: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "unexpected reply to CLUSTER GETKEYSINSLOT", reply))
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
    fn every_slot_has_a_probe_of_its_own() {
        for slot in [0, 1, 93, 8000, SLOTS - 1] {
            assert_eq!(key_slot(probe_key(slot).as_bytes()), slot);
        }
    }

    #[test]
    fn redirects_name_the_node() {
        let server = |reply: &str| match redis::parse_redis_value(reply.as_bytes()) {
            Ok(value @ Value::ServerError(_)) => value,
            other => panic!("not a server error: {other:?}"),
        };
        let Some(Answer::Moved(to)) = redirect(&server("-MOVED 93 127.0.0.1:7001\r\n")) else { panic!("moved") };
        assert_eq!(to, ("127.0.0.1".to_string(), 7001));
        let Some(Answer::Ask(to)) = redirect(&server("-ASK 93 ::1:7002\r\n")) else { panic!("ask") };
        assert_eq!(to, ("::1".to_string(), 7002));
        assert!(redirect(&server("-CLUSTERDOWN The cluster is down\r\n")).is_none());
        assert!(redirect(&Value::Int(1)).is_none());
    }

    #[test]
    fn only_keys_under_the_prefix_are_kept() {
        let keys = ["rf:views:a:1", "rf:other:a:1", "rf:views:b:2"].map(|k| Value::BulkString(k.into())).to_vec();
        let mut with_bad = keys.clone();
        with_bad.push(Value::BulkString(b"rf:views:\xff".to_vec()));
        assert_eq!(matching(with_bad, "rf:views:"), vec!["rf:views:a:1", "rf:views:b:2"]);
    }
}
