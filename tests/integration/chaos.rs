//! Chaos that searches (issue 11): each seed draws a pipeline (tumbling,
//! sliding or session windows; emit final or updates; late records dropped,
//! dead-lettered or, where the window kind allows, amended), one to three
//! connectors (the real binary, as child processes) and a schedule of
//! faults struck while the records are produced: connector SIGKILL,
//! SIGSTOP/SIGCONT, SIGTERM with a replacement, scaling out and in, a Redis
//! primary killed without waiting for replication, `CLUSTER FAILOVER
//! FORCE`, `CLIENT KILL`, and broker request errors (tests/common/
//! chaos_plan.rs). Meanwhile a reader samples the region and checks that
//! no value goes backwards (tests/common/region_watch.rs says exactly
//! what and why). Once every fault is healed, the region must equal the
//! reference computed from the records as the broker stored them, and the
//! region's change feed (mode `every` or `final`, drawn too) must end as
//! the region (tests/common/change_feed.rs).
//!
//! - `cargo test --test integration -- chaos::`: the fixed CI seeds ([`CI_SEEDS`]).
//! - `REGIONFLOW_CHAOS_SEED=N`: seed N only (printed by every run).
//! - `REGIONFLOW_CHAOS_SEEDS=K`: K random seeds; all run, failures are
//!   listed at the end.
//! - `REGIONFLOW_CHAOS_STEPS=0,2`: only those steps of the seed's schedule
//!   (to shrink a failing one).
//! - `REGIONFLOW_CHAOS_DRAW=narrow`: seeds given by the two above draw as
//!   the named seeds do ([`Draw::Narrow`]); the default is every fault.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::Message;

use common::change_feed;
use common::chaos_plan::{Draw, Fault, Late, Plan, WindowKind, BROKER_ERRORS};
use common::connector::Connector;
use common::kafka::Kafka;
use common::redis_cluster::RedisCluster;
use common::redis_faults::{self, RestartedNode};
use common::reference::{self, Order, Table};
use common::region_watch::{self, RegionWatch};

/// One per window kind (see `ci_seeds_cover_every_window_kind`): 6 amends
/// tumbling windows through a primary killed without waiting and a
/// SIGTERM handoff; 17 emits sliding-window updates through a SIGTERM, a
/// SIGKILL, `CLUSTER FAILOVER FORCE` and a scale-in; 19 emits session
/// updates through a scale-out, heartbeat errors (rebalances) and a 7 s
/// SIGSTOP (past the session timeout: the group moves on).
const CI_SEEDS: [u64; 3] = [6, 17, 19];
const PARTITIONS: i32 = 4;
const RECORDS: usize = 8_000;
const PER_SECOND: usize = 1_000;
/// How far behind its stream's clock an on-time record may be.
const DISORDER_MS: i64 = 300;
const BASE_TS: i64 = 1_700_000_000_000;
const MAX_CONNECTORS: usize = 4;
/// A retriable produce error: librdkafka retries until it clears.
const NOT_LEADER: RDKafkaRespErr = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION;

/// The records of `plan`, 2 ms of event time apart. Fixed windows: grouped
/// by one of 20 customers, spread over all partitions, 1% of them 1.5 s
/// late and 0.5% a minute late. Sessions: 30 customers, each in one
/// partition (its Kafka key), never behind the watermark by more than the
/// allowed lateness.
fn orders(plan: &Plan) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..RECORDS)
        .map(|i| {
            let clock = BASE_TS + 2 * i as i64;
            let on_time = clock - rng.random_range(0..=DISORDER_MS);
            let product = format!("p{}", rng.random_range(0..20));
            let amount = rng.random_range(1..50_000) as f64 / 100.0;
            if plan.window == WindowKind::Session {
                let c = rng.random_range(0..30);
                Order { partition: c % PARTITIONS, customer: format!("c{c}"), product, amount, ts: on_time }
            } else {
                let ts = match rng.random_range(0..1000) {
                    0..5 => clock - 60_000,
                    5..15 => clock - 1_500,
                    _ => on_time,
                };
                let customer = format!("c{}", rng.random_range(0..20));
                Order { partition: rng.random_range(0..PARTITIONS), customer, product, amount, ts }
            }
        })
        .collect()
}

/// What the region must hold for `stored` (each partition in offset order).
fn reference_table(plan: &Plan, stored: &[Order]) -> Table {
    let lateness = plan.allowed_lateness.as_millis() as i64;
    let disorder = plan.max_out_of_orderness.as_millis() as i64;
    let amend = plan.late == Late::Amend;
    match plan.window {
        WindowKind::Tumbling => reference::fixed_windows(stored, 1_000, 1_000, lateness, disorder, amend).0,
        WindowKind::Sliding => reference::fixed_windows(stored, 2_000, 500, lateness, disorder, amend).0,
        WindowKind::Session => reference::sessions(stored, 100),
    }
}

fn entry_key(plan: &Plan, (customer, start): &(String, i64), window_end: i64) -> String {
    let region = format!("rf:{}_chaos", plan.topic());
    match plan.window {
        WindowKind::Session => format!("{region}:{customer}:{start}:{window_end}"),
        _ => format!("{region}:{customer}:{start}"),
    }
}

/// The connectors of a run: those running, and those stopped (kept for their logs).
struct Fleet {
    config: PathBuf,
    dir: PathBuf,
    running: Vec<Connector>,
    stopped: Vec<Connector>,
    started: usize,
    /// Connectors that exited without being told to.
    unexpected_exits: Vec<String>,
}

impl Fleet {
    /// With `REGIONFLOW_KEEP_LOGS=<dir>`: every connector's whole log, and
    /// every difference from the reference, under the seed's name (a
    /// search's failing seeds would otherwise overwrite each other's).
    fn keep_evidence(&self, seed: u64, problems: &[String]) {
        let Ok(dir) = std::env::var("REGIONFLOW_KEEP_LOGS") else { return };
        let dir = Path::new(&dir);
        for c in self.running.iter().chain(&self.stopped) {
            let _ = std::fs::copy(&c.log, dir.join(format!("chaos-{seed}-{}.log", c.name)));
        }
        let _ = std::fs::write(dir.join(format!("chaos-{seed}-differences.txt")), problems.join("\n"));
    }

    fn start_one(&mut self) {
        let name = format!("c{}", self.started);
        self.started += 1;
        let c = tokio::task::block_in_place(|| Connector::start(&name, &self.config, &self.dir));
        self.running.push(c);
    }

    fn take(&mut self, target: usize) -> Connector {
        let i = target % self.running.len();
        self.running.remove(i)
    }

    /// Moves connectors that exited on their own to `stopped` and starts
    /// one in place of each, as an orchestrator would.
    fn replace_exited(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_running() {
                i += 1;
                continue;
            }
            let c = self.running.remove(i);
            let logs = c.logs();
            let tail: Vec<&str> = logs.lines().rev().take(5).collect();
            eprintln!("connector {} exited on its own; last lines: {tail:?}", c.name);
            self.unexpected_exits.push(c.name.clone());
            self.stopped.push(c);
            self.start_one();
        }
    }

    /// SIGTERM; a graceful stop must exit 0 (a failure is reported, not fatal).
    fn terminate(&mut self, target: usize) {
        let mut c = self.take(target);
        let clean = tokio::task::block_in_place(|| c.terminate(Duration::from_secs(30)));
        if !clean {
            eprintln!("connector {} did not exit 0 on SIGTERM", c.name);
            self.unexpected_exits.push(format!("{} (SIGTERM)", c.name));
        }
        self.stopped.push(c);
    }
}

fn start_producing(
    kafka: &Kafka,
    topic: &'static str,
    orders: Arc<Vec<Order>>,
    produced: Arc<AtomicUsize>,
    session_keys: bool,
) -> tokio::task::JoinHandle<()> {
    let producer = kafka.producer();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for (n, chunk) in orders.chunks(PER_SECOND / 10).enumerate() {
            tick.tick().await;
            let records: Vec<(String, String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let key = if session_keys { o.customer.clone() } else { format!("order-{}", n * 100 + i) };
                    let value = serde_json::json!({"customer": o.customer, "product": o.product, "amount": o.amount, "ts": o.ts});
                    (key, value.to_string())
                })
                .collect();
            let mut deliveries = Vec::new();
            for (o, (key, value)) in chunk.iter().zip(&records) {
                let record = FutureRecord::to(topic).partition(o.partition).key(key).payload(value);
                deliveries.push(producer.send(record, Duration::from_secs(60)));
            }
            for d in futures::future::join_all(deliveries).await {
                d.expect("produced");
            }
            produced.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    })
}

/// The records as the broker stored them, each partition in offset order.
fn stored_orders(kafka: &Kafka, topic: &str) -> Vec<Order> {
    let messages =
        tokio::task::block_in_place(|| kafka.read_topic(topic, PARTITIONS, RECORDS, Duration::from_secs(60)));
    messages
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().expect("payload")).expect("JSON order");
            Order {
                partition: m.partition(),
                customer: v["customer"].as_str().expect("customer").to_string(),
                product: v["product"].as_str().expect("product").to_string(),
                amount: v["amount"].as_f64().expect("amount"),
                ts: v["ts"].as_i64().expect("ts"),
            }
        })
        .collect()
}

/// Differences between the region and `expected`; empty when equal.
fn differences(plan: &Plan, ports: &[u16], expected: &Table) -> Vec<String> {
    let pattern = format!("rf:{}_chaos:*", plan.topic());
    let entries = match region_watch::snapshot(ports, &pattern) {
        Ok(entries) => entries,
        Err(e) => return vec![format!("region unreadable: {e}")],
    };
    let mut problems = Vec::new();
    let mut wanted = BTreeSet::new();
    for (k, e) in expected {
        let key = entry_key(plan, k, e.window_end);
        match entries.get(&key) {
            None => problems.push(format!("missing {key}")),
            Some(fields) => {
                if let Err(p) = reference::check_entry(fields, k.1, e) {
                    problems.push(format!("{key}: {p}"));
                }
            }
        }
        wanted.insert(key);
    }
    for key in entries.keys().filter(|k| !wanted.contains(*k)) {
        problems.push(format!("unexpected {key}"));
    }
    problems
}

fn write_config(plan: &Plan, dir: &Path, brokers: &str, cluster: &RedisCluster) -> PathBuf {
    let config = dir.join("regionflow.toml");
    let toml = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "chaos"
properties = {{ "session.timeout.ms" = "{session_timeout}", "heartbeat.interval.ms" = "500" }}
[redis]
nodes = {nodes}
key_prefix = "rf"
write_deadline = "90s"
response_timeout = "2s"
replica_timeout = "2s"
[connector]
flush_interval = "100ms"
checkpoint_interval = "{checkpoint}ms"
shutdown_timeout = "10s"
{pipeline}"#,
        nodes = common::toml_nodes(&cluster.urls()),
        checkpoint = plan.checkpoint_interval.as_millis(),
        pipeline = plan.pipeline_toml(),
        session_timeout = common::chaos_plan::SESSION_TIMEOUT_MS,
    );
    std::fs::write(&config, toml).expect("config written");
    config
}

/// What a passing run saw, for the summary line.
pub(crate) struct Outcome {
    samples: usize,
    discarded: usize,
    unexpected_exits: Vec<String>,
}

/// Carries out `plan` and checks the region; panics (naming the seed) on
/// any difference.
pub(crate) async fn run(plan: &Plan) -> Outcome {
    let seed = plan.seed;
    let topic = plan.topic();
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let ports = redis_faults::ports(&cluster);
    let dlq = format!("{topic}-dlq");
    let changes = format!("{topic}-changes");
    let kafka = Kafka::start(&[(topic, PARTITIONS), (dlq.as_str(), 1), (changes.as_str(), PARTITIONS)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(plan, dir.path(), &kafka.brokers, &cluster);
    let watch = RegionWatch::start(ports.clone(), format!("rf:{topic}_chaos:*"), plan.window == WindowKind::Session);
    let mut fleet = Fleet {
        config,
        dir: dir.path().to_path_buf(),
        running: Vec::new(),
        stopped: Vec::new(),
        started: 0,
        unexpected_exits: Vec::new(),
    };
    for _ in 0..plan.connectors {
        fleet.start_one();
    }
    let orders = Arc::new(orders(plan));
    let produced = Arc::new(AtomicUsize::new(0));
    let producing =
        start_producing(&kafka, topic, orders.clone(), produced.clone(), plan.window == WindowKind::Session);
    let mut restarted: Vec<RestartedNode> = Vec::new();
    let mut snapshot = None;
    let started = Instant::now();

    for (i, step) in plan.steps.iter().enumerate() {
        let target = (RECORDS as f64 * step.at) as usize;
        while produced.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fleet.replace_exited();
        eprintln!("chaos seed {seed}: {:.1}s step {i}: {}", started.elapsed().as_secs_f64(), step.fault);
        match &step.fault {
            Fault::Kill { replace } => {
                let mut c = fleet.take(step.target);
                c.kill();
                fleet.stopped.push(c);
                if *replace || fleet.running.is_empty() {
                    fleet.start_one();
                }
            }
            Fault::Pause(d) => {
                let i = step.target % fleet.running.len();
                fleet.running[i].pause();
                tokio::time::sleep(*d).await;
                fleet.running[i].resume();
            }
            Fault::Terminate => {
                fleet.terminate(step.target);
                fleet.start_one();
            }
            Fault::ScaleOut if fleet.running.len() < MAX_CONNECTORS => fleet.start_one(),
            Fault::ScaleIn if fleet.running.len() > 1 => fleet.terminate(step.target),
            Fault::ScaleOut | Fault::ScaleIn => eprintln!("chaos seed {seed}: step {i} skipped (fleet size)"),
            Fault::KillPrimary => {
                watch.lossy_fault_begins();
                let (port, node) =
                    tokio::task::block_in_place(|| redis_faults::kill_primary_unreplicated(&ports, step.target));
                watch.lossy_fault_ends();
                eprintln!("chaos seed {seed}: killed Redis primary {port}, restarted it as a replica");
                restarted.push(node);
            }
            Fault::ForceFailover => {
                watch.lossy_fault_begins();
                let port = tokio::task::block_in_place(|| redis_faults::force_failover(&ports, step.target));
                watch.lossy_fault_ends();
                eprintln!("chaos seed {seed}: replica {port} took over by CLUSTER FAILOVER FORCE");
            }
            Fault::ClientKill => {
                let killed = tokio::task::block_in_place(|| redis_faults::kill_clients(&ports));
                eprintln!("chaos seed {seed}: connections killed per primary: {killed:?}");
            }
            Fault::BrokerErrors(e) => {
                let (api, err, n) = BROKER_ERRORS[*e];
                kafka.cluster.request_errors(api, &vec![err; n]);
            }
            Fault::Export => {
                let output = tokio::task::block_in_place(|| {
                    std::process::Command::new(env!("CARGO_BIN_EXE_regionflow"))
                        .args(["region", "export", "--config"])
                        .arg(&fleet.config)
                        .args(["--region", &format!("{topic}_chaos")])
                        .output()
                        .expect("regionflow region export runs")
                });
                assert!(
                    output.status.success(),
                    "chaos seed {seed}: export failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let changes =
                    change_feed::parse_export(&String::from_utf8_lossy(&output.stdout), &format!("{topic}_chaos"));
                eprintln!("chaos seed {seed}: exported {} entries while writes go on", changes.len());
                assert!(!changes.is_empty(), "chaos seed {seed}: the export found no entry");
                snapshot = Some(changes);
            }
            Fault::KillWhilePublishing => {
                kafka.cluster.request_errors(RDKafkaApiKey::Produce, &[NOT_LEADER; 100_000]);
                // Until a connector holds changes that are in Redis and not
                // acknowledged by Kafka (the feed's pending gauge says so).
                let waited = Instant::now();
                let holding = loop {
                    let holding =
                        fleet.running.iter().position(|c| c.metric("regionflow_change_feed_pending", &[]) > 0.0);
                    if holding.is_some() || waited.elapsed() > Duration::from_secs(20) {
                        break holding;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let i = holding.unwrap_or_else(|| panic!("chaos seed {seed}: no connector held unpublished changes"));
                let mut c = fleet.running.remove(i);
                eprintln!("chaos seed {seed}: {} holds unpublished changes; SIGKILL", c.name);
                c.kill();
                fleet.stopped.push(c);
                kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
                fleet.start_one();
            }
        }
    }
    producing.await.unwrap_or_else(|e| panic!("chaos seed {seed}: producer failed: {e}"));

    // Heal: no more broker errors, every exited connector replaced.
    for (api, _, _) in BROKER_ERRORS {
        kafka.cluster.clear_request_errors(api);
    }
    fleet.replace_exited();
    let stored = stored_orders(&kafka, topic);
    assert_eq!(stored.len(), RECORDS, "chaos seed {seed}: the broker stored every record once");
    let expected = reference_table(plan, &stored);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let problems = tokio::task::block_in_place(|| differences(plan, &ports, &expected));
        if problems.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = fleet
                .running
                .iter_mut()
                .map(|c| {
                    let running = c.is_running();
                    format!(
                        "{} running={running} records_in={} late={}",
                        c.name,
                        c.metric("regionflow_records_in_total", &[]),
                        c.metric("regionflow_late_records_total", &[])
                    )
                })
                .collect();
            fleet.keep_evidence(seed, &problems);
            panic!(
                "chaos seed {seed}: the region differs from the reference 60 s after the stream ended: {} of {} \
                 entries, e.g. {:?}\nplan: {plan}\nconnectors: {states:?}\nrerun: {}",
                problems.len(),
                expected.len(),
                &problems[..problems.len().min(8)],
                plan.rerun()
            );
        }
        fleet.replace_exited();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A few more samples of the final region.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = watch.finish();
    assert!(
        report.violations.is_empty(),
        "chaos seed {seed}: a reader saw values go backwards: {:?}\nplan: {plan}\nrerun: {}",
        report.violations,
        plan.rerun()
    );
    let mut above = Vec::new();
    for (k, e) in &expected {
        let key = entry_key(plan, k, e.window_end);
        if let Some(&max) = report.max_count.get(&key) {
            if max > e.count {
                above.push(format!("{key}: saw {max} orders, reference {}", e.count));
            }
        }
    }
    assert!(
        above.is_empty(),
        "chaos seed {seed}: a reader saw counts above the final reference (doubled records): {above:?}\nplan: {plan}"
    );
    assert!(
        report.samples > report.discarded,
        "chaos seed {seed}: the reader could not read the region once ({} samples)",
        report.samples
    );
    check_change_feed(plan, &kafka, &ports, snapshot.as_deref());
    drop(restarted);
    Outcome { samples: report.samples, discarded: report.discarded, unexpected_exits: fleet.unexpected_exits }
}

/// The change feed, once the region is final: the latest version of every
/// entry equals the region (so no entry's final value is missing from the
/// feed), and duplicates (republished by a partition's next owner) carry
/// the same change under the same version. (A feed in `final` mode over
/// `emit = updates` gets the last windows once the idle timeout closes
/// them, after the region already holds their values as updates.)
fn check_change_feed(plan: &Plan, kafka: &Kafka, ports: &[u16], snapshot: Option<&[change_feed::FeedChange]>) {
    let seed = plan.seed;
    let region = format!("{}_chaos", plan.topic());
    let topic = format!("{}-changes", plan.topic());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let messages = tokio::task::block_in_place(|| {
            change_feed::read_to_end(&kafka.brokers, &topic, PARTITIONS, Duration::from_secs(60))
        });
        let feed = change_feed::parse(&messages, &region);
        let duplicates = change_feed::conflicting_duplicates(&feed);
        assert!(duplicates.is_empty(), "chaos seed {seed}: one version, two changes: {duplicates:?}\nplan: {plan}");
        let region_now = tokio::task::block_in_place(|| region_watch::snapshot(ports, &format!("rf:{region}:*")))
            .unwrap_or_else(|e| panic!("chaos seed {seed}: region unreadable: {e}"));
        let mut problems = change_feed::differences_from_region(&feed, &region_now);
        if plan.window == WindowKind::Session && !plan.makes_zombie() {
            // One source partition writes each session entry: its versions
            // reach the feed in order. Not when a zombie wakes: its producer
            // delivers what it published before it froze, after its
            // successor's newer versions (the README says so; consumers
            // keep the highest version, which the comparison above checks).
            problems.extend(change_feed::out_of_order(&feed));
        }
        if let Some(snapshot) = snapshot {
            // A snapshot taken mid-run, then the feed, keeping the highest
            // version per entry, converges to the region.
            let combined: Vec<_> = snapshot.iter().chain(&feed).cloned().collect();
            let converged = change_feed::differences_from_region(&combined, &region_now);
            problems.extend(converged.into_iter().map(|p| format!("snapshot + feed: {p}")));
        }
        if problems.is_empty() {
            eprintln!("chaos seed {seed}: the change feed's {} changes end as the region", feed.len());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chaos seed {seed}: the change feed's latest versions differ from the region 30 s after it was final: \
             {} entries, e.g. {:?}\nplan: {plan}\nrerun: {}",
            problems.len(),
            &problems[..problems.len().min(8)],
            plan.rerun()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs each seed on a fresh runtime, catching failures so that a search
/// goes on; panics at the end listing the failed seeds.
fn run_seeds(seeds: &[u64], draw: Draw) {
    let only: Option<Vec<usize>> = std::env::var("REGIONFLOW_CHAOS_STEPS")
        .ok()
        .map(|s| s.split(',').map(|i| i.trim().parse().expect("REGIONFLOW_CHAOS_STEPS: step indexes")).collect());
    let all = Instant::now();
    let mut failed = Vec::new();
    for &seed in seeds {
        let mut plan = Plan::from_seed(seed, draw);
        if let Some(only) = &only {
            plan = plan.only_steps(only);
        }
        eprintln!("chaos {plan}");
        let started = Instant::now();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(run(&plan))));
        drop(runtime);
        match result {
            Ok(o) => eprintln!(
                "chaos seed {seed}: passed in {:.0}s ({} reader samples, {} discarded; unplanned exits {:?})",
                started.elapsed().as_secs_f64(),
                o.samples,
                o.discarded,
                o.unexpected_exits
            ),
            Err(_) => {
                eprintln!("chaos seed {seed}: FAILED after {:.0}s", started.elapsed().as_secs_f64());
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "chaos: {} seeds ({draw:?} draw) in {:.0}s, {} failed: {failed:?}",
        seeds.len(),
        all.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "chaos seeds failed: {failed:?}; rerun one with REGIONFLOW_CHAOS_SEED=<seed>{}",
        if draw == Draw::Narrow { " REGIONFLOW_CHAOS_DRAW=narrow" } else { "" }
    );
}

/// Random seeds, small enough to type.
fn random_seeds(k: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64,
    );
    (0..k).map(|_| rng.random_range(1_000..1_000_000)).collect()
}

#[test]
fn chaos() {
    let draw = match std::env::var("REGIONFLOW_CHAOS_DRAW").as_deref() {
        Err(_) | Ok("full") => Draw::Full,
        Ok("narrow") => Draw::Narrow,
        Ok(other) => panic!("REGIONFLOW_CHAOS_DRAW is `full` or `narrow`, not {other:?}"),
    };
    if let Ok(seed) = std::env::var("REGIONFLOW_CHAOS_SEED") {
        run_seeds(&[seed.parse().expect("REGIONFLOW_CHAOS_SEED is a number")], draw);
    } else if let Ok(k) = std::env::var("REGIONFLOW_CHAOS_SEEDS") {
        run_seeds(&random_seeds(k.parse().expect("REGIONFLOW_CHAOS_SEEDS is a number")), draw);
    } else {
        run_seeds(&CI_SEEDS, Draw::Narrow);
    }
}

/// Runs one fixed seed's plan on a runtime of its own.
fn run_alone(plan: &Plan) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    eprintln!("chaos {plan}");
    runtime.block_on(run(plan))
}

#[test]
fn ci_seeds_cover_every_window_kind() {
    let plans: Vec<Plan> = CI_SEEDS.iter().map(|&s| Plan::from_seed(s, Draw::Narrow)).collect();
    for kind in [WindowKind::Tumbling, WindowKind::Sliding, WindowKind::Session] {
        assert!(plans.iter().any(|p| p.window == kind), "no CI seed runs {kind:?}: {plans:#?}");
    }
}

/// Found by seed 19 (its step 2): a connector frozen (SIGSTOP; likewise a
/// VM pause or a long stall) for longer than the watermark's idle timeout
/// woke up, found each partition "caught up" by the statistics it held
/// from before the freeze, and advanced its idle watermark past the
/// records produced meanwhile, which were then dropped as late for good.
/// Fixed first by statistics younger than 1.5 s; that was not enough (seed
/// 730422 below): the partition's leader now confirms the quiet time.
#[test]
fn seed_19_a_pause_past_the_idle_timeout_loses_nothing() {
    // Seed 19's pause, on tumbling windows, without the session-specific
    // bug the same pause exposed (the session test below). This variant
    // passes with or without the statistics-freshness fix: it guards the
    // scenario, it does not reproduce the late drops seed 19 first showed.
    let mut plan = Plan::from_seed(19, Draw::Full).only_steps(&[2]);
    plan.window = common::chaos_plan::WindowKind::Tumbling;
    plan.steps[0].fault = Fault::Pause(Duration::from_millis(common::chaos_plan::IDLE_TIMEOUT_MS + 2_000));
    run_alone(&plan);
}

/// Seed 19 as found, on session windows: after the frozen connector wakes
/// as a zombie (its session timed out, its partitions moved), it wrote
/// session entries under keys its successor never writes (a session's
/// bounds are in its key), and fencing per entry cannot refuse a write to
/// a new entry. Fixed by the session ledger: a session task records its
/// entries under the partition's epoch before writing them, so the
/// zombie's record is refused and it writes nothing. Under the whole
/// suite's load it failed again: a zombie frozen between recording and
/// writing created the sessions its successor had just retracted from
/// nothing. Fixed by fences: a retraction leaves its epoch in the entry
/// (`_f:<topic>:<partition>`, a tombstone when nothing else is left), and
/// the merge function refuses older epochs there.
#[test]
fn seed_19_sessions_a_zombie_writes_no_entry_its_successor_does_not() {
    let mut plan = Plan::from_seed(19, Draw::Full).only_steps(&[2]);
    plan.steps[0].fault = Fault::Pause(Duration::from_millis(common::chaos_plan::IDLE_TIMEOUT_MS + 2_000));
    run_alone(&plan);
}

/// Found by seed 323466 (its step 3): during `CLUSTER FAILOVER FORCE`
/// under `redundancy = 1`, a checkpoint got a reply of a type it did not
/// expect and gave up within milliseconds, stopping two of three
/// connectors. Fixed: such replies are transient (retried until the write
/// deadline), and replication is confirmed by offsets, not `WAIT`. It
/// depends on a checkpoint meeting the failover, so a pass alone proves
/// less than a failure would.
#[test]
fn seed_323466_a_forced_failover_stops_no_connector() {
    let plan = Plan::from_seed(323_466, Draw::Narrow);
    let outcome = run_alone(&plan);
    assert!(
        outcome.unexpected_exits.is_empty(),
        "chaos seed 323466: connectors stopped on their own: {:?}",
        outcome.unexpected_exits
    );
}

/// Found by seed 929730 (session windows, emit updates, redundancy 1; its
/// schedule: OffsetFetch errors, a connector SIGKILLed, a scale-out, a
/// Redis primary killed without waiting): once healed, the region still
/// held 17 intermediate session entries the reference does not have. The
/// SIGKILLed connector had written running values of sessions after its
/// last checkpoint, and its successor's replay, with its update ticks
/// elsewhere, never wrote those keys, so never retracted them. Fixed by
/// the session ledger (src/pipeline/task/ledger.rs). With the change feed
/// the seed then found that a change published before the primary died
/// unreplicated repeated its version after the replay: with redundancy,
/// changes are now published once replicas hold their writes.
#[test]
fn seed_929730_sessions_written_before_a_crash_are_retracted_by_the_replay() {
    let plan = Plan::from_seed(929_730, Draw::Narrow);
    run_alone(&plan);
}

/// Found by seed 730422 (session windows, one connector, redundancy 1; its
/// schedule: that connector frozen for 11.1 s, past the 10 s idle timeout,
/// then OffsetFetch errors, a scale-out and a SIGKILL): 43 sessions
/// missing. On waking, the frozen connector was handed statistics that
/// looked fresh but held its partitions' high watermarks from before the
/// freeze, so they looked caught up, and the idle watermark of one jumped
/// past the records produced meanwhile; it checkpointed that watermark,
/// and its successor dropped 158 of them as late. Fixed: the partition's
/// leader confirms the quiet time an idle watermark advances by. The
/// freeze must meet a moment when the statistics trail, so a pass alone
/// proves less than a failure would.
#[test]
fn seed_730422_a_frozen_connector_closes_no_window_early() {
    let plan = Plan::from_seed(730_422, Draw::Full);
    run_alone(&plan);
}

/// Found by seed 833981 (sliding windows, emit updates, one connector,
/// redundancy 1; its schedule: OffsetFetch errors, then `CLUSTER FAILOVER
/// FORCE`): 268 of 722 entries short. The failover made every task restart
/// in place before its first checkpoint, so each partition was assigned
/// again at the group's committed offset, which librdkafka looked up while
/// the coordinator answered with errors and the assignment kept changing
/// (one partition restarted after another). librdkafka then leaves such a
/// partition assigned and never fetches it: the partitions stopped for
/// good, silently. Fixed: the connector looks committed offsets up itself,
/// retrying, and always assigns an explicit offset. Failed 2 of 2 runs
/// before the fix.
#[test]
fn seed_833981_a_failed_committed_offset_lookup_stops_no_partition() {
    run_alone(&Plan::from_seed(833_981, Draw::Full));
}

/// Found by seed 645363 (session windows, emit updates, three connectors,
/// redundancy 1; its schedule: a connector frozen 7.6 s, past the session
/// timeout, then `CLUSTER FAILOVER FORCE` as it wakes): two single-record
/// sessions stayed in the region that the reference merges into larger
/// ones. The woken connector still held the newest epoch and wrote session
/// entries; the forced failover lost their ledger records (one shard) but
/// not the entries (others), so the successors never retracted them.
/// Fixed: with redundancy, entries wait until replicas hold their records;
/// `replication::session_entries_wait_until_replicas_hold_their_ledger_records`
/// proves it deterministically. The failover must meet the records in
/// flight, so a pass alone proves less than a failure would.
#[test]
fn seed_645363_a_forced_failover_hides_no_session_from_the_successor() {
    run_alone(&Plan::from_seed(645_363, Draw::Full));
}

/// Found by seed 556995 (tumbling windows, emit updates, amend, one
/// connector, redundancy 1; `CLUSTER FAILOVER FORCE` 3 s in): entries
/// short by one partition's partial, less one record. A partition wrote a
/// window's final (a replace, acknowledged by the old primary, lost in the
/// failover) and right after an amendment (a merge, applied by the
/// promoted replica onto nothing, so stored as that record alone under
/// the amendment's offset); the task's replay, at lower offsets, was then
/// stale against it. Fixed: a merge names the replication histories it
/// may build on (the task's as of its last checkpoint), a promoted replica
/// refuses it, and the task replays
/// (`merge_script::a_merge_builds_only_on_a_replication_history_it_names`).
/// Failed 1 of 3 runs side by side before the fix, 0 of 9 after. The
/// failover must fall between the two writes, so a pass alone proves less
/// than a failure would.
#[test]
fn seed_556995_a_merge_builds_on_no_partial_a_failover_lost() {
    run_alone(&Plan::from_seed(556_995, Draw::Full));
}
