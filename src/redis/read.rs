//! Reading regions back: one entry, or every key under a region's prefix,
//! for `regionflow region get`, `scan` and `export`.
//!
//! One entry is one `HGETALL`, routed by redis-rs (which follows `MOVED`
//! and `ASK`), retried like every operation through
//! [`ClusterHandle::with_retry`].
//!
//! Listing a region is the hard part: its entries are spread over every
//! primary, and slots may move between primaries (resharding) or to a
//! replica (failover) while the listing runs. [`RegionReader::keys`]:
//!
//! 1. asks every primary for its own state (`topology.rs`: id, config
//!    epoch, slots served, slots migrating or importing);
//! 2. `SCAN`s every primary for hashes matching the prefix (the server
//!    filters, so only matching keys travel);
//! 3. asks every primary again. A node's scan is complete for every slot
//!    it held, unchanged, from 1 to 3; the others (moved, migrating at
//!    either moment, on a node that failed over, changed its config epoch
//!    or did not answer) are *unsettled* (`Topology::unsettled`);
//! 4. reads each unsettled slot again on its own (`slot.rs`): on its owner,
//!    in one transaction with that node's view of the slot, and while the
//!    slot migrates, on the source and then the target.
//!
//! Keys are returned sorted and once, however many nodes listed them.
//! Unsettled slots are listed with `CLUSTER GETKEYSINSLOT`, which returns
//! every key of the slot (the prefix is applied here), so a scan during a
//! resharding costs more than one without. One case is not caught: a
//! migration that is started and then rolled back (keys moved back to
//! their source, `SETSLOT ... STABLE`) entirely within step 2, which
//! changes neither a node's slots nor its epoch.

mod slot;
mod topology;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use super::cluster::{ClusterHandle, Failed};
use super::slots::SlotMap;
use topology::{Address, NodeReport, NodeView, SlotSet, Topology};

const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Keys a `SCAN` step asks for.
const SCAN_COUNT: usize = 1000;
/// Entries or slots read at once.
const CONCURRENCY: usize = 32;
/// How long a node's `SCAN` is retried before its slots are left to be
/// read one by one, wherever they are by then (a dead primary's are on its
/// promoted replica).
const SCAN_NODE_DEADLINE: Duration = Duration::from_secs(2);

/// Why a region could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{what} failed after retrying for {elapsed:?}: {message}")]
    Failed { what: String, elapsed: Duration, message: String },
}

impl ReadError {
    fn from_failed(what: impl Into<String>, failed: Failed) -> ReadError {
        ReadError::Failed { what: what.into(), elapsed: failed.elapsed, message: failed.message() }
    }
}

/// A hash's fields and values, as `HGETALL` returns them (empty when the
/// key does not exist or is not a hash).
pub type Fields = Vec<(String, String)>;

/// Reads entries and lists keys on a Redis Cluster.
pub struct RegionReader {
    handle: Arc<ClusterHandle>,
    /// How long each operation retries transient failures.
    deadline: Duration,
}

impl RegionReader {
    pub fn new(handle: Arc<ClusterHandle>, deadline: Duration) -> RegionReader {
        RegionReader { handle, deadline }
    }

    /// `HGETALL key`.
    pub async fn fields(&self, key: &str) -> Result<Fields, ReadError> {
        self.handle
            .with_retry(self.deadline, "HGETALL", |mut c| {
                let key = key.to_string();
                async move {
                    match redis::cmd("HGETALL").arg(&key).query_async::<Fields>(&mut c).await {
                        // Another type under the region's prefix is no entry.
                        Err(e) if e.code() == Some("WRONGTYPE") => Ok(Vec::new()),
                        other => other,
                    }
                }
            })
            .await
            .map(|(fields, _)| fields)
            .map_err(|failed| ReadError::from_failed(format!("reading {key}"), failed))
    }

    /// `HGETALL` of each key, in order, several at a time.
    pub async fn fields_of(&self, keys: &[String]) -> Result<Vec<Fields>, ReadError> {
        futures::stream::iter(keys).map(|key| self.fields(key)).buffered(CONCURRENCY).try_collect().await
    }

    /// Every hash whose key starts with `prefix`, sorted, on whichever
    /// primary it is and wherever it moves meanwhile (see the module docs).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, ReadError> {
        let pattern = format!("{}*", glob_escape(prefix));
        let before = self.topology().await?;
        let pattern = &pattern;
        let scans = before.nodes.keys().map(|address| async move {
            let mut keys = BTreeSet::new();
            let scanned = self.scan_node(address, pattern, &mut keys).await;
            (address, scanned, keys)
        });
        let mut keys = BTreeSet::new();
        let mut unscanned = SlotSet::default();
        for (address, scanned, node_keys) in futures::future::join_all(scans).await {
            match scanned {
                Ok(()) => keys.extend(node_keys),
                Err(failed) if failed.is_permanent() => {
                    return Err(ReadError::from_failed(format!("SCAN on {}:{}", address.0, address.1), failed))
                }
                Err(failed) => {
                    tracing::warn!(node = %format!("{}:{}", address.0, address.1), error = %failed.message(),
                        "SCAN failed; reading that node's slots one by one");
                    keys.extend(node_keys);
                    let view = &before.nodes[address];
                    unscanned.extend(&view.served);
                    if let Some(report) = &view.report {
                        unscanned.extend(&report.slots);
                    }
                }
            }
        }
        let after = self.topology().await?;
        let mut unsettled = before.unsettled(&after);
        unsettled.extend(&unscanned);
        if !unsettled.is_empty() {
            tracing::info!(
                slots = unsettled.len(),
                "slots moved or were unreadable during the scan; reading them again"
            );
            keys.extend(self.reread(unsettled, after, prefix).await?);
        }
        Ok(keys.into_iter().collect())
    }

    /// The keys under `prefix` of each slot in `slots`, read one slot at a
    /// time, in rounds: a slot whose owner could not be reached is tried
    /// again in the next round, on the owner a fresh topology names, until
    /// the deadline. Within a round, a node that failed once is not asked
    /// again, so a round costs at most about one response timeout.
    async fn reread(&self, slots: SlotSet, mut topology: Topology, prefix: &str) -> Result<Vec<String>, ReadError> {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut pending: Vec<u16> = slots.iter().collect();
        let mut keys = Vec::new();
        loop {
            let unreachable = std::sync::Mutex::new(BTreeSet::new());
            let (failed, last_error) = {
                let unreachable = &unreachable;
                let attempts = pending.iter().copied().map(|slot| {
                    let owner = topology.owner_of(slot).cloned();
                    async move { (slot, self.slot_keys(slot, owner, prefix, unreachable).await) }
                });
                let mut attempts = futures::stream::iter(attempts).buffer_unordered(CONCURRENCY);
                let (mut failed, mut last_error) = (Vec::new(), String::new());
                while let Some((slot, result)) = attempts.next().await {
                    match result {
                        Ok(slot_keys) => keys.extend(slot_keys),
                        Err(slot::Unread::Permanent(message)) => {
                            return Err(ReadError::Failed {
                                what: format!("listing the keys of slot {slot}"),
                                elapsed: started.elapsed(),
                                message,
                            })
                        }
                        Err(slot::Unread::Transient(message)) => {
                            failed.push(slot);
                            last_error = message;
                        }
                    }
                }
                (failed, last_error)
            };
            if failed.is_empty() {
                return Ok(keys);
            }
            if started.elapsed() >= self.deadline {
                return Err(ReadError::Failed {
                    what: format!("listing the keys of {} slots (slot {} among them)", failed.len(), failed[0]),
                    elapsed: started.elapsed(),
                    message: last_error,
                });
            }
            tracing::warn!(slots = failed.len(), error = %last_error, "slots unreadable; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            topology = self.topology().await?;
            pending = failed;
        }
    }

    /// Every hash key on one node matching `pattern`, into `keys`.
    async fn scan_node(&self, address: &Address, pattern: &str, keys: &mut BTreeSet<String>) -> Result<(), Failed> {
        let route =
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: address.0.clone(), port: address.1 });
        let mut cursor = String::from("0");
        loop {
            let (reply, _) = self
                .handle
                .with_retry(self.deadline.min(SCAN_NODE_DEADLINE), "SCAN", |mut c| {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(&cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT).arg("TYPE").arg("hash");
                    let route = route.clone();
                    async move {
                        let reply = c.route_command(cmd, route).await?;
                        redis::from_redis_value::<(String, Vec<Vec<u8>>)>(reply).map_err(redis::RedisError::from)
                    }
                })
                .await?;
            let (next, batch) = reply;
            // Regions are written with UTF-8 keys; anything else is no entry.
            keys.extend(batch.into_iter().filter_map(|key| String::from_utf8(key).ok()));
            if next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Every primary (by `CLUSTER SLOTS`) and what it says about itself.
    async fn topology(&self) -> Result<Topology, ReadError> {
        let map = self.cluster_slots().await?;
        let mut topology = Topology::default();
        for index in 0..map.primaries() {
            let (host, port) = map.address(index);
            let mut served = SlotSet::default();
            (0..crate::redis::slots::SLOTS)
                .filter(|s| map.primary_of_slot(*s) == Some(index))
                .for_each(|s| served.insert(s));
            let report = self.node_report(host, port).await;
            topology.nodes.insert((host.to_string(), port), NodeView { served, report });
        }
        Ok(topology)
    }

    /// One node's own line of `CLUSTER NODES`; `None` when it does not
    /// answer within the response timeout (its slots are then unsettled).
    async fn node_report(&self, host: &str, port: u16) -> Option<NodeReport> {
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port });
        let (_, mut connection) = self.handle.get();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let reply = connection.route_command(cmd, route).await;
        match reply.and_then(|r| redis::from_redis_value::<String>(r).map_err(redis::RedisError::from)) {
            Ok(text) => NodeReport::parse(&text),
            Err(e) => {
                tracing::warn!(node = %format!("{host}:{port}"), error = %e, "CLUSTER NODES failed");
                None
            }
        }
    }

    /// A fresh `CLUSTER SLOTS` (not the handle's cached map: the point is
    /// to see moves).
    async fn cluster_slots(&self) -> Result<SlotMap, ReadError> {
        let started = Instant::now();
        let (reply, _) = self
            .handle
            .with_retry(self.deadline, "CLUSTER SLOTS", |mut c| async move {
                redis::cmd("CLUSTER").arg("SLOTS").query_async::<Value>(&mut c).await
            })
            .await
            .map_err(|failed| ReadError::from_failed("CLUSTER SLOTS", failed))?;
        SlotMap::parse(&reply).ok_or_else(|| ReadError::Failed {
            what: "CLUSTER SLOTS".into(),
            elapsed: started.elapsed(),
            message: "the reply names no primary by address".into(),
        })
    }
}

/// `text` as a `SCAN MATCH` pattern that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("rf:views:"), "rf:views:");
        assert_eq!(glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
    }
}
