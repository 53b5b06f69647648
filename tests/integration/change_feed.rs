//! The change feed end to end (issue 13), on the real Redis Cluster and a
//! Kafka-protocol broker over TCP, through the chaos harness: for each
//! window kind, a pipeline with a change feed runs on two connectors over
//! four partitions, and one connector is SIGKILLed while it holds changes
//! that reached Redis but not Kafka (produce requests fail until then).
//! Later, `regionflow region export` takes a snapshot while writes go on. Afterwards the region equals the independent reference, the
//! latest version of every entry in the feed equals the region, so does the
//! snapshot followed by the feed, duplicates carry the same change, and
//! (where one partition writes each entry) every entry's versions appear in
//! increasing order.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::change_feed;
use common::chaos_plan::{Draw, Fault, Late, Plan, Step, WindowKind};

/// A plan of `window` with a change feed in `mode`, two connectors, and one
/// kill while publishing at half the stream.
fn plan(window: WindowKind, emit_updates: bool, changes_final: bool) -> Plan {
    let mut plan = Plan::from_seed(1, Draw::Narrow);
    plan.window = window;
    plan.emit_updates = emit_updates;
    plan.changes_final = changes_final;
    (plan.late, plan.allowed_lateness, plan.max_out_of_orderness) = match window {
        WindowKind::Session => (Late::Drop, Duration::from_millis(400), Duration::from_millis(150)),
        _ => (Late::Amend, Duration::from_millis(500), Duration::from_millis(300)),
    };
    plan.checkpoint_interval = Duration::from_millis(1_000);
    plan.connectors = 2;
    plan.redundancy = 0;
    plan.steps = vec![
        Step { at: 0.5, fault: Fault::KillWhilePublishing, target: 0 },
        Step { at: 0.8, fault: Fault::Export, target: 0 },
    ];
    plan
}

fn run(plan: &Plan) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    eprintln!("change feed {plan}");
    runtime.block_on(super::chaos::run(plan));
}

#[test]
fn tumbling_amendments_every_change_survives_a_kill_while_publishing() {
    run(&plan(WindowKind::Tumbling, false, false));
}

#[test]
fn sliding_updates_final_changes_survive_a_kill_while_publishing() {
    run(&plan(WindowKind::Sliding, true, true));
}

#[test]
fn session_every_change_survives_a_kill_while_publishing() {
    run(&plan(WindowKind::Session, false, false));
}

/// The same kill on sessions with emit mode `updates`: the dead connector
/// wrote running values of sessions after its last checkpoint, and its
/// successor's replay, whose update ticks fall elsewhere, never writes
/// those keys. Before the session ledger (src/pipeline/task/ledger.rs)
/// they stayed in the region for good (issue 11, seed 929730); this fault
/// reproduced it every time.
#[test]
fn session_updates_a_kill_while_publishing_leaves_no_orphaned_session() {
    run(&plan(WindowKind::Session, true, false));
}

/// Versions of one entry, in the order one feed partition holds them, must
/// increase when a single source partition writes the entry (sessions are
/// keyed by the Kafka key). Duplicates (a republished version) may repeat
/// the latest version, never an older one.
#[test]
fn versions_increase_within_a_partition() {
    let changes = vec![
        feed_change(0, 0, "e", 1),
        feed_change(0, 1, "e", 2),
        feed_change(0, 2, "e", 2),
        feed_change(0, 3, "e", 3),
    ];
    assert!(change_feed::out_of_order(&changes).is_empty());
    let mut bad = changes.clone();
    bad.push(feed_change(0, 4, "e", 1));
    assert_eq!(change_feed::out_of_order(&bad).len(), 1);
}

fn feed_change(partition: i32, offset: i64, entry: &str, version: u64) -> change_feed::FeedChange {
    change_feed::FeedChange {
        partition,
        offset,
        entry: entry.into(),
        version,
        fields: Some(BTreeMap::from([("v".to_string(), version.to_string())])),
    }
}
