//! The end-to-end benchmark (issue 5): the standard workloads through a
//! real Kafka-protocol broker, the connector and the local six-node Redis
//! Cluster, each figure next to the ceiling measured in the same run.
//!
//! Run it with `scripts/bench.sh` (which builds in release); knobs are
//! environment variables, see `Options::from_env` or `scripts/bench.sh -h`.
//!
//! One process plays the harness: it starts the Redis Cluster
//! (`tests/common/redis_cluster.rs`) and librdkafka's mock cluster (three
//! brokers on loopback TCP ports), produces the records, and measures:
//!
//! - source ceiling (`source_ceiling`): a bare librdkafka consumer reading
//!   the same topic (`BaseConsumer::poll`, no processing);
//! - compute ceiling (`compute_ceiling`): the operator core (one
//!   `WindowOperator` and watermark per partition, as the tasks run them) on
//!   pre-decoded in-memory events, one thread; also decode + operator from
//!   the raw records;
//! - sink ceiling (`sink_ceiling`): the entries the pipeline writes (built
//!   from the compute run's results with the connector's own
//!   `RegionLayout`), written with raw pipelines per primary: the same
//!   `FCALL` of the merge function, and plain `HSET` of the public fields;
//! - the connector (`connector`, `child`): this binary re-executed as a
//!   child process (`BENCH_ROLE=connector`) that does exactly what
//!   `regionflow run` does (`app::redis_sinks` + `connector::run`),
//!   with the regions wrapped to timestamp every acknowledged entry write;
//!   the child is separate so its peak RSS and CPU time are its own, not the
//!   broker's or the harness's;
//! - state bytes per open window-key (`state`): an operator-only run under a
//!   counting global allocator (live heap bytes / open (key, window) pairs);
//! - latency at half the W1 throughput (`latency`), live;
//! - the change feed's cost (`feed`): W1 again with `region.changes` on,
//!   against the W1 run without it.
//!
//! The data sets come from `data` (records from `support`, the workloads
//! every bench shares); `report` prints the tables.
//!
//! Each data set ends with one closing record per partition far ahead in
//! event time, so every data window fires; a run is done when the region
//! has acknowledged as many entry writes as the compute run fired results.

// The crate root resolves `mod x;` next to itself, in benches/: the
// benchmark's own modules live in benches/end_to_end/.
#[path = "end_to_end/child.rs"]
mod child;
#[path = "end_to_end/compute_ceiling.rs"]
mod compute_ceiling;
#[path = "end_to_end/connector.rs"]
mod connector;
#[path = "end_to_end/data.rs"]
mod data;
#[path = "end_to_end/feed.rs"]
mod feed;
#[path = "end_to_end/latency.rs"]
mod latency;
#[path = "end_to_end/options.rs"]
mod options;
#[path = "end_to_end/process.rs"]
mod process;
#[path = "end_to_end/report.rs"]
mod report;
#[path = "end_to_end/sink_ceiling.rs"]
mod sink_ceiling;
#[path = "end_to_end/source_ceiling.rs"]
mod source_ceiling;
#[path = "end_to_end/state.rs"]
mod state;
mod support;

#[allow(dead_code)]
#[path = "../tests/common/net.rs"]
mod net;
#[allow(dead_code)]
#[path = "../tests/common/prom_text.rs"]
mod prom_text;
#[allow(dead_code)]
#[path = "../tests/common/redis_cluster.rs"]
mod redis_cluster;
/// The TLS side of the harness, which redis_cluster.rs refers to.
#[allow(dead_code)]
#[path = "../tests/common/secure/mod.rs"]
mod secure;

use std::time::Instant;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use compute_ceiling::compute_ceiling;
use connector::ConnectorRun;
use data::{produce, DataSet};
use latency::latency_run;
use options::Options;
use process::{clock_ticks, machine};
use report::{print_rows, si, Row};
use sink_ceiling::{sink_ceiling, Redis};
use source_ceiling::{consume_ceiling, consume_with};
use state::{state_size, state_stress};
use support::Workload;

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("connector") {
        child::connector_child();
        return;
    }
    let opts = Options::from_env();
    let ticks = clock_ticks();
    println!("regionflow end-to-end benchmark — {}", machine());
    println!("options: {opts:?}");
    let total = Instant::now();

    let redis_cluster = redis_cluster::RedisCluster::start();
    let redis_nodes = redis_cluster.urls();
    let mock = MockCluster::<DefaultProducerContext>::new(opts.brokers).expect("mock Kafka cluster");
    let brokers = mock.bootstrap_servers();
    println!("Redis Cluster: {} primaries; mock Kafka: {brokers}", redis_cluster.primary_ports().len());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let redis = runtime.block_on(Redis::connect(&redis_cluster));

    let mut plans: Vec<(&'static str, u32, usize, Vec<Workload>)> = Vec::new();
    let main_workloads: Vec<Workload> =
        ["w1", "w3"].iter().filter(|w| opts.wants(w)).filter_map(|w| Workload::parse(w)).collect();
    if !main_workloads.is_empty() {
        plans.push(("100k", opts.keys, opts.events, main_workloads));
    }
    if opts.wants("w2") {
        // W2 writes ~4.5 entries per event (six windows per event, each
        // closing with ~45k keys); fewer events keep the run short.
        plans.push(("100k-w2", opts.keys, opts.w2_events, vec![Workload::W2]));
    }
    if opts.wants("w1-10m") {
        plans.push(("10m", opts.high_keys, opts.high_events, vec![Workload::W1]));
    }
    // Few keys, many events: the connector's own cost per event, with
    // little to write (each window-key gathers dense_events / windows /
    // keys events), against the source ceiling.
    let dense: Vec<Workload> = [("w1-dense", Workload::W1), ("w2-dense", Workload::W2)]
        .iter()
        .filter(|(w, _)| opts.wants(w))
        .map(|(_, w)| *w)
        .collect();
    if !dense.is_empty() {
        plans.push(("dense", opts.dense_keys, opts.dense_events, dense));
    }

    let mut rows = Vec::new();
    let mut live_partitions = None;
    let mut feed_cost = None;
    for (name, keys, n, workloads) in plans {
        let topic = format!("bench-{name}");
        let data = DataSet::new(name, &topic, n, keys, opts.partitions, 42);
        let partitions = data.partitions;
        live_partitions.get_or_insert(partitions);
        mock.create_topic(&topic, partitions, 1).expect("topic created");
        println!(
            "\n[{name}] {n} events over {keys} keys, {} partitions, {:.1} MB of keys+values",
            partitions,
            data.bytes as f64 / 1e6
        );
        let produced = produce(&brokers, &data, partitions);
        println!("  produced at {}/s", si(produced));
        if let Ok(extra) = std::env::var("BENCH_SOURCE_DEBUG") {
            // Diagnostics for the source ceiling: repeated reads with extra
            // consumer properties (`k=v;k=v`).
            for i in 0..4 {
                let r = consume_with(&brokers, &data, partitions, 100 + i, &extra);
                println!("  debug read {i} [{extra}]: {}/s", si(r.events_per_s));
            }
            continue;
        }
        let source = consume_ceiling(&brokers, &data, partitions);
        println!("  source ceiling: {}/s, {:.1} MB/s", si(source.events_per_s), source.bytes_per_s / 1e6);
        for workload in workloads {
            let label = if data.name == "10m" {
                format!("{}-10M keys", workload.name())
            } else if data.name == "dense" {
                format!("{}-dense", workload.name())
            } else {
                format!("{} {}", workload.name(), workload.describe().split(' ').next().unwrap_or(""))
            };
            println!("  {label}:");
            let compute = compute_ceiling(workload, &data, partitions);
            println!(
                "    compute ceiling: operator {}/s, decode+operator {}/s; {} entries",
                si(compute.operator_events_per_s),
                si(compute.decode_operator_events_per_s),
                compute.results.len()
            );
            let entries = compute.results.len();
            // W1 of the standard data set runs again with the change feed on.
            let feed_on = workload == Workload::W1 && data.name == "100k" && opts.changes_rounds > 0;
            let sink = runtime.block_on(sink_ceiling(&redis, workload, &topic, &compute.results, &opts, feed_on));
            println!(
                "    sink ceiling: merge FCALL {}/s ({:.1} us of Redis time per merge function run, {:.1} us client CPU \
                 per entry), HSET {}/s",
                si(sink.merge_per_s),
                sink.script_us,
                sink.client_us,
                si(sink.hset_per_s)
            );
            if let Some(c) = &sink.with_changes {
                println!(
                    "    sink ceiling capturing the change: merge FCALL {}/s ({:.1} us of Redis time per run, {:.1} us \
                     client CPU per entry)",
                    si(c.per_s),
                    c.script_us,
                    c.client_us
                );
            }
            let state = state_size(workload, &data, partitions);
            println!(
                "    state: {:.0} B per open window-key at {} open",
                state.bytes_per_window_key, state.open_window_keys
            );
            let connector = ConnectorRun {
                redis: &redis,
                workload,
                brokers: &brokers,
                redis_nodes: &redis_nodes,
                data: &data,
                expected: entries as u64,
                inner_per_script: sink.inner_per_script,
                opts: &opts,
                ticks,
            };
            let run = runtime.block_on(connector.run("", None));
            println!(
                "    connector: {}/s ({:.1} s), {} entries written, peak RSS {:.0} MB, {:.2} CPU us/event, \
                 Redis us/event {:.2} in FCALL + {:.2} in scripts (checkpoints, session ledger) {}",
                si(run.events_per_s),
                run.seconds,
                run.written,
                run.peak_rss as f64 / 1048576.0,
                run.cpu_us_per_event,
                run.redis_us_per_event_fcall,
                run.redis_us_per_event_scripts,
                run.note
            );
            if let Some(sink_changes) = &sink.with_changes {
                let topic = feed::changes_topic(&data);
                mock.create_topic(&topic, partitions, 1).expect("topic created");
                println!("    with the change feed to {topic}:");
                let rounds = runtime.block_on(feed::feed_rounds(&connector, &run, opts.changes_rounds, &topic));
                feed_cost = Some(feed::FeedCost {
                    topic,
                    rounds,
                    sink_plain_us: sink.script_us,
                    sink_plain_per_s: sink.merge_per_s,
                    sink_changes_us: sink_changes.script_us,
                    sink_changes_per_s: sink_changes.per_s,
                });
            }
            rows.push(Row { label, events: n, keys, source, compute, sink, entries, run, state });
        }
        // Free the data set's results before the next one.
        runtime.block_on(redis.flush_all());
    }

    let stress = (opts.stress_keys > 0).then(|| {
        println!("\n[stress] W1, {} keys in one window", opts.stress_keys);
        state_stress(opts.stress_keys)
    });

    let latency = if opts.wants("latency") {
        let w1 = rows.iter().find(|r| r.label.starts_with("W1 ")).map(|r| r.run.events_per_s);
        let rate = opts.latency_rate.or(w1.map(|r| r / 2.0)).unwrap_or(50_000.0);
        let topic = "bench-live";
        let partitions = live_partitions.unwrap_or(if opts.partitions > 0 { opts.partitions } else { 4 });
        mock.create_topic(topic, partitions, 1).expect("topic created");
        runtime.block_on(redis.flush_all());
        println!("\n[latency] W1 live at {}/s for {} s", si(rate), opts.latency_secs);
        Some(latency_run(&brokers, &redis_nodes, &opts, rate, topic, partitions))
    } else {
        None
    };

    print_rows(&rows);
    if let Some(cost) = feed_cost {
        report::print_feed(&cost);
    }
    if let Some(stress) = stress {
        report::print_state_at_scale(stress);
    }
    if let Some(l) = latency {
        report::print_latency(&l, &opts);
    }
    if let Ok(path) = std::env::var("BENCH_SUMMARY") {
        report::write_summary(&path, &rows);
    }
    println!("\ntotal {:.0} s", total.elapsed().as_secs_f64());
    drop(redis);
    drop(runtime);
    drop(mock);
    drop(redis_cluster);
}
