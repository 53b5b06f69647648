//! Whether a task's writes reached `N` replicas, decided by replication
//! offsets rather than by `WAIT`.
//!
//! `WAIT` counts replicas that acknowledged the last write *of the
//! connection it is sent on*. redis-rs' cluster client reconnects to a node
//! by itself after a reset, so a `WAIT` can run on a socket that carried
//! none of the task's writes and return at once while they are still
//! unreplicated. Offsets do not depend on the socket:
//!
//! - a primary's `master_repl_offset` covers every write it has executed,
//!   so read after the task's writes were acknowledged, it is a target
//!   offset that covers them, as long as the process that acknowledged them
//!   is the one answering (same `run_id`) with the same replication history
//!   (same `master_replid`) and is still a primary;
//! - each replica's acknowledged offset (`slaveN:...,offset=`) says how far
//!   it holds that stream.
//!
//! So a task snapshots every primary's identity before it writes (at its
//! start, then at each checkpoint); at the next checkpoint it snapshots
//! again, requires the same primaries with the same identities (a failover
//! or restart in between is a change: the writes may be lost, and the task
//! restarts from its last checkpoint), and waits until `N` replicas of each
//! primary acknowledged that primary's current offset.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::cluster::ClusterHandle;

/// One primary, as `INFO server replication` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryState {
    pub run_id: String,
    pub replid: String,
    pub offset: i64,
    /// Acknowledged offsets of its replicas.
    pub replica_offsets: Vec<i64>,
}

impl PrimaryState {
    /// Parses `INFO server replication`; `None` unless it is a primary.
    pub fn parse(info: &str) -> Option<PrimaryState> {
        let field = |name: &str| {
            info.lines().find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':').map(str::to_string))
        };
        if field("role")? != "master" {
            return None;
        }
        let replica_offsets = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains(":ip="))
            .filter_map(|l| {
                l.trim_end().split(',').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok())
            })
            .collect();
        Some(PrimaryState {
            run_id: field("run_id")?,
            replid: field("master_replid")?,
            offset: field("master_repl_offset")?.parse().ok()?,
            replica_offsets,
        })
    }

    /// Replicas holding the stream up to `target`.
    pub fn acknowledged(&self, target: i64) -> usize {
        self.replica_offsets.iter().filter(|o| **o >= target).count()
    }

    fn same_process(&self, other: &PrimaryState) -> bool {
        self.run_id == other.run_id && self.replid == other.replid && self.offset <= other.offset
    }
}

/// Every primary by address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(pub BTreeMap<(String, u16), PrimaryState>);

impl Snapshot {
    /// Whether `later` shows the same primaries, each the same process
    /// with the same replication history, as `self`.
    pub fn unchanged_in(&self, later: &Snapshot) -> bool {
        self.0.len() == later.0.len()
            && self.0.iter().all(|(address, before)| later.0.get(address).is_some_and(|now| before.same_process(now)))
    }
}

/// Why replication could not be confirmed.
#[derive(Debug)]
pub enum Unconfirmed {
    /// A primary failed over, restarted or was replaced since the snapshot.
    Changed,
    /// Fewer than wanted replicas caught up within the timeout.
    Behind { acked: usize },
    /// A primary did not answer.
    Unavailable(String),
}

async fn info(handle: &ClusterHandle, host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let (_, mut connection) = handle.get();
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port });
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server").arg("replication");
    match tokio::time::timeout(timeout, connection.route_command(cmd, route)).await {
        Ok(Ok(value)) => redis::from_redis_value::<String>(value).map_err(|e| format!("{host}:{port}: {e}")),
        Ok(Err(e)) => Err(format!("{host}:{port}: {e}")),
        Err(_) => Err(format!("{host}:{port}: no answer within {timeout:?}")),
    }
}

/// Every primary's state now.
pub async fn snapshot(handle: &ClusterHandle, timeout: Duration) -> Result<Snapshot, String> {
    let slots = handle.slot_map().await.ok_or("no slot map: CLUSTER SLOTS does not answer")?;
    let mut primaries = BTreeMap::new();
    for index in 0..slots.primaries() {
        let (host, port) = slots.address(index);
        let text = info(handle, host, port, timeout).await?;
        let Some(state) = PrimaryState::parse(&text) else {
            handle.forget_slot_map();
            return Err(format!("{host}:{port} is no longer a primary"));
        };
        primaries.insert((host.to_string(), port), state);
    }
    Ok(Snapshot(primaries))
}

/// Confirms that every write acknowledged since `before` (taken before
/// those writes) is held by `replicas` replicas of its primary, waiting up
/// to `timeout`; returns the snapshot it confirmed against.
pub async fn confirm(
    handle: &ClusterHandle,
    before: &Snapshot,
    replicas: usize,
    timeout: Duration,
) -> Result<Snapshot, Unconfirmed> {
    let now = snapshot(handle, timeout).await.map_err(Unconfirmed::Unavailable)?;
    if !before.unchanged_in(&now) {
        return Err(Unconfirmed::Changed);
    }
    let started = Instant::now();
    for ((host, port), target) in &now.0 {
        let mut state = target.clone();
        while state.acknowledged(target.offset) < replicas {
            if started.elapsed() >= timeout {
                return Err(Unconfirmed::Behind { acked: state.acknowledged(target.offset) });
            }
            // WAIT on any connection makes the primary ask its replicas for
            // acknowledgements (REPLCONF GETACK): fresher offsets below.
            let (_, mut connection) = handle.get();
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
            let mut wait = redis::cmd("WAIT");
            wait.arg(replicas).arg(50);
            let _ = tokio::time::timeout(Duration::from_millis(500), connection.route_command(wait, route)).await;
            let text = info(handle, host, *port, timeout).await.map_err(Unconfirmed::Unavailable)?;
            state = match PrimaryState::parse(&text) {
                Some(state) if target.same_process(&state) => state,
                _ => return Err(Unconfirmed::Changed),
            };
        }
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:7000\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7003,state=online,offset=1500,lag=0\r\nslave1:ip=127.0.0.1,port=7004,state=online,offset=900,lag=1\r\nmaster_failover_state:no-failover\r\nmaster_replid:r1\r\nmaster_replid2:0000\r\nmaster_repl_offset:1500\r\n";

    #[test]
    fn parses_a_primary_and_counts_replicas_caught_up() {
        let state = PrimaryState::parse(INFO).expect("a primary");
        assert_eq!(state.run_id, "abc123");
        assert_eq!(state.replid, "r1");
        assert_eq!(state.offset, 1500);
        assert_eq!(state.replica_offsets, [1500, 900]);
        assert_eq!(state.acknowledged(1500), 1);
        assert_eq!(state.acknowledged(900), 2);
        assert_eq!(PrimaryState::parse(&INFO.replace("role:master", "role:slave")), None);
    }

    #[test]
    fn a_restart_or_failover_is_a_change() {
        let before = Snapshot(BTreeMap::from([(("h".to_string(), 1), PrimaryState::parse(INFO).unwrap())]));
        let later = |info: &str| Snapshot(BTreeMap::from([(("h".to_string(), 1), PrimaryState::parse(info).unwrap())]));
        assert!(before.unchanged_in(&later(&INFO.replace("master_repl_offset:1500", "master_repl_offset:2000"))));
        assert!(!before.unchanged_in(&later(&INFO.replace("run_id:abc123", "run_id:def456"))), "restarted");
        assert!(!before.unchanged_in(&later(&INFO.replace("master_replid:r1", "master_replid:r2"))), "new history");
        assert!(
            !before.unchanged_in(&later(&INFO.replace("master_repl_offset:1500", "master_repl_offset:10"))),
            "offset went back"
        );
        assert!(!before.unchanged_in(&Snapshot::default()), "primaries changed");
    }
}
