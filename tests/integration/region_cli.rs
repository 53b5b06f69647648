//! Reading regions back: `regionflow region get`, `scan` and `export`.
//!
//! - Real pipelines (tumbling, sliding and session windows, three key
//!   templates, group keys with colons and non-ASCII characters) fill three
//!   regions from the mock broker; `get` and `scan` must show what an
//!   independent reference (`common::reference`) computes, with times in
//!   RFC 3339, and `export` (to standard output and to a topic, read back)
//!   must carry every entry exactly as `HGETALL` shows it, and, for the
//!   region with a change feed, exactly as the feed's latest change of it.
//! - A scan while slots move between primaries, key by key, must list every
//!   entry once; a naive `SCAN` of each primary is run beside it to show
//!   that the moves do hide keys from it.
//! - Bad arguments and an unreachable cluster fail at once, saying why.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{header, Kafka, Produce};
use common::redis_cluster::RedisCluster;
use common::reference::{self, Order, Table};
use regionflow::config::Settings;
use regionflow::metrics::Metrics;
use regionflow::redis::read::RegionReader;
use regionflow::redis::{ClusterHandle, RedisRegion};
use regionflow::region::{Capture, EntryWrite, Expiry, Region, WriteMode};
use regionflow::window::{Accumulator, AggregateFunction, Window};

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regionflow")).args(args).output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI from async tests without stalling the runtime.
fn run(args: &[&str]) -> (bool, String, String) {
    tokio::task::block_in_place(|| cli(args))
}

/// `regionflow region <command> --config <config> --region <region> <rest>`.
fn region(command: &str, config: &str, region: &str, rest: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> =
        ["region", command, "--config", config, "--region", region].into_iter().chain(rest.iter().copied()).collect();
    run(&args)
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("regionflow.toml");
    std::fs::write(&path, toml).expect("written");
    path
}

/// Epoch milliseconds as RFC 3339, formatted here rather than by the code
/// under test.
fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).expect("in range").format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8(b).expect("UTF-8"),
        redis::Value::SimpleString(s) => s,
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("expected a string, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// get, scan and export on regions real pipelines wrote
// ---------------------------------------------------------------------------

const BASE_TS: i64 = 1_700_000_000_000;
const PARTITIONS: i32 = 4;

/// The customers (group keys): colons, digits and non-ASCII included, and
/// prefixes of one another (`c1`, `c10`).
fn customers() -> Vec<String> {
    let mut names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    names.extend(["c:1".to_string(), "ü:1".to_string()]);
    names
}

/// ~12 s of orders, each up to 200 ms behind the stream's clock (less than
/// the pipelines' 300 ms out-of-orderness: none is late). The partition is
/// the customer's, so that sessions (keyed by the Kafka key) see a key's
/// records in one partition; the other pipelines group by the customer
/// field anyway.
fn orders() -> Vec<Order> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let customers = customers();
    (0..1500)
        .map(|i| {
            let c = rng.random_range(0..customers.len());
            Order {
                partition: c as i32 % PARTITIONS,
                customer: customers[c].clone(),
                product: format!("p{}", rng.random_range(0..20)),
                amount: rng.random_range(1..100_000) as f64 / 100.0,
                ts: BASE_TS + 8 * i as i64 - rng.random_range(0..=200),
            }
        })
        .collect()
}

fn records(orders: &[Order]) -> Vec<Produce> {
    orders
        .iter()
        .map(|o| Produce {
            partition: o.partition,
            key: Some(o.customer.clone()),
            value: serde_json::json!({"customer": o.customer, "product": o.product, "amount": o.amount, "ts": o.ts})
                .to_string()
                .into_bytes(),
        })
        .collect()
}

/// One region the test filled: its reference and its entries' keys.
struct Expected {
    region: &'static str,
    table: Table,
    /// The Redis key of (customer, window start, window end).
    key: fn(&str, i64, i64) -> String,
}

impl Expected {
    /// (customer, start) of every entry key.
    fn by_entry(&self) -> BTreeMap<String, (String, i64)> {
        self.table.iter().map(|((c, s), e)| ((self.key)(c, *s, e.window_end), (c.clone(), *s))).collect()
    }
}

fn pipelines_toml(brokers: &str, nodes: &str) -> String {
    let pipeline = |name: &str, key: &str, window: &str, region: &str| {
        format!(
            r#"
[pipelines.{name}]
topics = ["{name}"]
key = {key}
event_time = {{ from = "field", pointer = "/ts", format = "epoch_millis" }}
window = {window}
watermark = {{ max_out_of_orderness = "300ms", idle_timeout = "2s" }}
region = {region}
[pipelines.{name}.aggregates]
{aggregates}"#,
            aggregates = reference::AGGREGATES
        )
    };
    let by_field = r#"{ from = "field", pointer = "/customer" }"#;
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "region-cli"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[redis]
nodes = {nodes}
[connector]
flush_interval = "100ms"
{}{}{}"#,
        pipeline(
            "tumbling",
            by_field,
            r#"{ kind = "tumbling", size = "2s" }"#,
            r#"{ name = "tumbling_orders", changes = { topic = "tumbling-changes" } }"#
        ),
        pipeline(
            "sliding",
            by_field,
            r#"{ kind = "sliding", size = "4s", slide = "1s" }"#,
            r#"{ name = "sliding_orders", key = "s/{window_start}/{key}" }"#
        ),
        pipeline(
            "session",
            r#"{ from = "kafka_key" }"#,
            r#"{ kind = "session", gap = "150ms" }"#,
            r#"{ name = "session_orders", key = "{key}:{window_start}:{window_end}" }"#
        ),
    )
}

/// HGETALL of every key of `region`, by key.
async fn stored(
    con: &mut redis::cluster_async::ClusterConnection,
    cluster: &RedisCluster,
    region: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    use redis::AsyncCommands;
    let keys = tokio::task::block_in_place(|| cluster.keys(&format!("rf:{region}:*")));
    let mut out = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = con.hgetall(&key).await.expect("HGETALL");
        // A deleted entry's tombstone (fences, version) is no entry.
        if fields.contains_key("window_start") {
            out.insert(key, fields);
        }
    }
    out
}

/// Whether `region` holds exactly the reference's entries.
async fn matches_reference(
    con: &mut redis::cluster_async::ClusterConnection,
    cluster: &RedisCluster,
    expected: &Expected,
) -> Result<(), String> {
    let stored = stored(con, cluster, expected.region).await;
    let by_entry = expected.by_entry();
    if stored.keys().ne(by_entry.keys()) {
        return Err(format!("{}: {} entries, expected {}", expected.region, stored.len(), by_entry.len()));
    }
    for (key, (customer, start)) in &by_entry {
        reference::check_entry(&stored[key], *start, &expected.table[&(customer.clone(), *start)])
            .map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

fn public(fields: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    fields.iter().filter(|(f, _)| !f.starts_with('_')).map(|(f, v)| (f.clone(), v.clone())).collect()
}

fn version(fields: &BTreeMap<String, String>) -> u64 {
    fields.get("_v").map_or(0, |v| v.parse().expect("a version"))
}

fn json_fields(line: &serde_json::Value) -> BTreeMap<String, String> {
    let object = line["fields"].as_object().unwrap_or_else(|| panic!("fields in {line}"));
    object.iter().map(|(f, v)| (f.clone(), v.as_str().expect("string values").to_string())).collect()
}

/// A `get`/`scan` JSON line against the reference and the stored hash.
fn check_line(
    line: &serde_json::Value,
    expected: &Expected,
    stored: &BTreeMap<String, BTreeMap<String, String>>,
) -> (String, i64) {
    let entry = line["entry"].as_str().expect("entry");
    let (customer, start) = expected.by_entry().remove(entry).unwrap_or_else(|| panic!("{entry} is no expected entry"));
    let reference = &expected.table[&(customer.clone(), start)];
    assert_eq!(line["region"], expected.region);
    assert_eq!(line["key"], customer.as_str());
    assert_eq!(line["op"], "upsert");
    assert_eq!(line["window_start"], start);
    assert_eq!(line["window_end"], reference.window_end);
    assert_eq!(line["window_start_rfc3339"], rfc3339(start), "{line}");
    assert_eq!(line["window_end_rfc3339"], rfc3339(reference.window_end), "{line}");
    assert_eq!(line["version"], version(&stored[entry]));
    let fields = json_fields(line);
    reference::check_entry(&fields, start, reference).unwrap_or_else(|e| panic!("{entry}: {e}"));
    assert_eq!(fields, public(&stored[entry]), "{entry}: fields as HGETALL shows them");
    (customer, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_scan_and_export_show_what_the_pipelines_wrote() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[
        ("tumbling", PARTITIONS),
        ("sliding", PARTITIONS),
        ("session", PARTITIONS),
        ("tumbling-changes", 3),
    ]);
    // Sessions need a key's records in one partition; the fixed windows get
    // them spread over every partition, so that entries merge partials of
    // several (and, with the feed, have several versions).
    let orders = orders();
    let spread: Vec<Order> =
        orders.iter().enumerate().map(|(i, o)| Order { partition: i as i32 % PARTITIONS, ..o.clone() }).collect();
    kafka.produce("tumbling", &records(&spread)).await;
    kafka.produce("sliding", &records(&spread)).await;
    kafka.produce("session", &records(&orders)).await;
    let (tumbling, late) = reference::fixed_windows(&spread, 2_000, 2_000, 0, 300, false);
    assert_eq!(late, 0);
    let (sliding, late) = reference::fixed_windows(&spread, 4_000, 1_000, 0, 300, false);
    assert_eq!(late, 0);
    let regions = [
        Expected { region: "tumbling_orders", table: tumbling, key: |c, s, _| format!("rf:tumbling_orders:{c}:{s}") },
        Expected { region: "sliding_orders", table: sliding, key: |c, s, _| format!("rf:sliding_orders:s/{s}/{c}") },
        Expected {
            region: "session_orders",
            table: reference::sessions(&orders, 150),
            key: |c, s, e| format!("rf:session_orders:{c}:{s}:{e}"),
        },
    ];
    assert!(regions[2].table.len() > regions[2].table.keys().map(|(c, _)| c).collect::<BTreeSet<_>>().len());

    let toml = pipelines_toml(&kafka.brokers, &common::toml_nodes(&cluster.urls()));
    let connector = common::InProcess::start(Settings::from_toml_str(&toml).expect("valid")).await;
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let started = Instant::now();
    for expected in &regions {
        loop {
            match matches_reference(&mut con, &cluster, expected).await {
                Ok(()) => break,
                Err(e) => assert!(started.elapsed() < Duration::from_secs(90), "regions never matched: {e}"),
            }
            assert!(!connector.handle.is_finished(), "the connector stopped");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    connector.stop().await.expect("clean stop");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &toml);
    let config = config.to_str().expect("UTF-8 path");

    // scan, every entry: the reference, in key order, times in RFC 3339.
    for expected in &regions {
        let stored = stored(&mut con, &cluster, expected.region).await;
        let (ok, stdout, stderr) = region("scan", config, expected.region, &["--limit", "0", "--output", "json"]);
        assert!(ok, "{stderr}");
        let lines = json_lines(&stdout);
        let shown: Vec<(String, i64)> = lines.iter().map(|l| check_line(l, expected, &stored)).collect();
        assert_eq!(shown.len(), expected.table.len(), "{}", expected.region);
        let entries: Vec<&str> = lines.iter().map(|l| l["entry"].as_str().expect("entry")).collect();
        assert!(entries.windows(2).all(|w| w[0] < w[1]), "in key order");
        assert!(stderr.contains(&format!("{} entries of region `{}`", lines.len(), expected.region)), "{stderr}");
    }

    // scan with a key prefix and a time range, on a template that starts
    // with the key and on one that starts with the window.
    let (from, to) = (BASE_TS + 2_000, BASE_TS + 7_000);
    for expected in &regions[..2] {
        let stored = stored(&mut con, &cluster, expected.region).await;
        let (ok, stdout, stderr) = region(
            "scan",
            config,
            expected.region,
            &["--prefix", "c1", "--from", &rfc3339(from), "--to", &rfc3339(to), "--output", "json"],
        );
        assert!(ok, "{stderr}");
        let shown: BTreeSet<(String, i64)> =
            json_lines(&stdout).iter().map(|l| check_line(l, expected, &stored)).collect();
        let want: BTreeSet<(String, i64)> =
            expected.table.keys().filter(|(c, s)| c.starts_with("c1") && (from..to).contains(s)).cloned().collect();
        assert!(want.iter().any(|(c, _)| c == "c10") && want.iter().any(|(c, _)| c == "c1"), "{want:?}");
        assert_eq!(shown, want, "{}", expected.region);
    }

    // The default limit, as a table: the first 100 entries in key order.
    let sliding = &regions[1];
    assert!(sliding.table.len() > 100);
    let (ok, stdout, stderr) = run(&["region", "scan", "--config", config, "--region", "sliding_orders"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("100 entries of region `sliding_orders` (stopped at --limit 100"), "{stderr}");
    let mut rows = stdout.lines();
    let columns: Vec<&str> = rows.next().expect("a header").split_whitespace().collect();
    assert_eq!(columns[..4], ["key", "window_start", "window_end", "version"]);
    assert_eq!(
        columns[4..],
        ["avg_amount", "first_product", "largest", "last_product", "orders", "products", "revenue", "smallest"]
    );
    let by_entry = sliding.by_entry();
    let first_100: Vec<&(String, i64)> = by_entry.values().take(100).collect();
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 100);
    for (row, (customer, start)) in rows.iter().zip(first_100) {
        let e = &sliding.table[&(customer.clone(), *start)];
        assert_eq!(row[..3], [customer.as_str(), &rfc3339(*start), &rfc3339(e.window_end)]);
        assert_eq!(row[8], e.count.to_string(), "orders column");
    }

    // get by window start, and by a time inside the window(s).
    let tumbling = &regions[0];
    let stored_tumbling = stored(&mut con, &cluster, "tumbling_orders").await;
    let (customer, start) = tumbling.table.keys().find(|(c, _)| c == "ü:1").expect("ü:1 has entries").clone();
    let (ok, stdout, stderr) = region(
        "get",
        config,
        "tumbling_orders",
        &["--key", &customer, "--window-start", &start.to_string(), "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(check_line(&lines[0], tumbling, &stored_tumbling), (customer.clone(), start));
    let (ok, table, stderr) =
        region("get", config, "tumbling_orders", &["--key", &customer, "--at", &rfc3339(start + 1_999)]);
    assert!(ok, "{stderr}");
    let table: Vec<&str> = table.lines().collect();
    assert_eq!(table.len(), 2, "{table:?}");
    assert!(table[1].starts_with(&format!("{customer}  {}  {}", rfc3339(start), rfc3339(start + 2_000))), "{table:?}");

    // With partials: each source partition's, as stored.
    let (ok, stdout, stderr) = region(
        "get",
        config,
        "tumbling_orders",
        &["--key", &customer, "--window-start", &start.to_string(), "--output", "json", "--partials"],
    );
    assert!(ok, "{stderr}");
    let line = &json_lines(&stdout)[0];
    let hash = &stored_tumbling[line["entry"].as_str().expect("entry")];
    let partials: BTreeMap<String, serde_json::Value> = hash
        .iter()
        .filter(|(f, _)| f.starts_with("_p:"))
        .map(|(f, v)| (f.clone(), serde_json::from_str(v).expect("JSON")))
        .collect();
    assert!(!partials.is_empty());
    assert_eq!(line["partials"], serde_json::to_value(&partials).expect("JSON"));

    // Sliding windows: every window of the key containing the time.
    let stored_sliding = stored(&mut con, &cluster, "sliding_orders").await;
    let at = BASE_TS + 6_543;
    let (ok, stdout, stderr) =
        region("get", config, "sliding_orders", &["--key", "c1", "--at", &rfc3339(at), "--output", "json"]);
    assert!(ok, "{stderr}");
    let shown: BTreeSet<(String, i64)> =
        json_lines(&stdout).iter().map(|l| check_line(l, sliding, &stored_sliding)).collect();
    let want: BTreeSet<(String, i64)> = sliding
        .table
        .iter()
        .filter(|((c, s), e)| c == "c1" && *s <= at && at < e.window_end)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(want.len(), 4, "the data set has c1 in all four windows");
    assert_eq!(shown, want);

    // Sessions: by start (the key holds the end, so the key's entries are
    // scanned), by a time inside, and a time between sessions.
    let session = &regions[2];
    let stored_session = stored(&mut con, &cluster, "session_orders").await;
    let ((customer, start), e) =
        session.table.iter().find(|((c, _), e)| c == "c:1" && e.window_end - e.first.0 > 1).expect("a session of c:1");
    let (ok, stdout, stderr) = region(
        "get",
        config,
        "session_orders",
        &["--key", customer, "--window-start", &start.to_string(), "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(check_line(&lines[0], session, &stored_session), (customer.clone(), *start));
    let (ok, stdout, stderr) = region(
        "get",
        config,
        "session_orders",
        &["--key", customer, "--at", &rfc3339(e.window_end - 1), "--output", "json"],
    );
    assert!(ok, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(check_line(&lines[0], session, &stored_session), (customer.clone(), *start));
    let (ok, stdout, stderr) =
        region("get", config, "session_orders", &["--key", customer, "--at", &rfc3339(BASE_TS - 60_000)]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(&format!("has no entry of key `{customer}` with a window containing")), "{stderr}");

    // export to standard output: every entry, exactly as HGETALL shows it.
    for expected in &regions {
        let stored = stored(&mut con, &cluster, expected.region).await;
        let (ok, stdout, stderr) = run(&["region", "export", "--config", config, "--region", expected.region]);
        assert!(ok, "{stderr}");
        let lines = json_lines(&stdout);
        check_export(&lines, expected, &stored);
        assert!(
            stderr.contains(&format!("exported {} entries of region `{}`", stored.len(), expected.region)),
            "{stderr}"
        );
    }

    // A snapshot is the feed's latest change per entry, byte for byte the
    // same JSON: the tumbling region has a change feed, and its entries
    // merge several partitions' partials (several versions).
    let stored_tumbling = stored(&mut con, &cluster, "tumbling_orders").await;
    let versions: u64 = stored_tumbling.values().map(version).sum();
    assert!(stored_tumbling.values().any(|f| version(f) > 1), "entries with several versions");
    let feed = tokio::task::block_in_place(|| {
        kafka.read_topic("tumbling-changes", 3, versions as usize, Duration::from_secs(30))
    });
    let mut latest: BTreeMap<String, (u64, serde_json::Value)> = BTreeMap::new();
    for m in &feed {
        use rdkafka::Message;
        let value: serde_json::Value = serde_json::from_slice(m.payload().expect("no deletions")).expect("JSON");
        let (entry, v) = (value["entry"].as_str().expect("entry").to_string(), value["version"].as_u64().expect("v"));
        if latest.get(&entry).is_none_or(|(seen, _)| *seen < v) {
            latest.insert(entry, (v, value));
        }
    }
    let (ok, stdout, stderr) = run(&["region", "export", "--config", config, "--region", "tumbling_orders"]);
    assert!(ok, "{stderr}");
    let snapshot: BTreeMap<String, serde_json::Value> =
        json_lines(&stdout).into_iter().map(|l| (l["entry"].as_str().expect("entry").to_string(), l)).collect();
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), latest.keys().collect::<Vec<_>>());
    for (entry, line) in &snapshot {
        assert_eq!(line, &latest[entry].1, "{entry}: the export is the feed's latest change");
    }

    // export to a topic, read back: the same changes, keyed by entry, with
    // the change feed's headers.
    kafka.cluster.create_topic("changes", 3, 1).expect("topic created");
    let (ok, _, stderr) = region("export", config, "session_orders", &["--topic", "changes"]);
    assert!(ok, "{stderr}");
    let stored_session = stored(&mut con, &cluster, "session_orders").await;
    assert!(
        stderr.contains(&format!(
            "exported {} entries of region `session_orders` to topic `changes`",
            stored_session.len()
        )),
        "{stderr}"
    );
    let messages =
        tokio::task::block_in_place(|| kafka.read_topic("changes", 3, stored_session.len(), Duration::from_secs(30)));
    let mut lines = Vec::new();
    for m in &messages {
        use rdkafka::Message;
        let value: serde_json::Value = serde_json::from_slice(m.payload().expect("a value")).expect("JSON");
        assert_eq!(m.key(), value["entry"].as_str().map(str::as_bytes), "keyed by entry");
        assert_eq!(header(m, "regionflow.region").as_deref(), Some("session_orders"));
        assert_eq!(header(m, "regionflow.op").as_deref(), Some("upsert"));
        assert_eq!(header(m, "regionflow.version"), Some(value["version"].to_string()));
        lines.push(value);
    }
    check_export(&lines, session, &stored_session);
}

/// An export: each stored entry once, an upsert at its version with its
/// public fields, and the reference's values.
fn check_export(lines: &[serde_json::Value], expected: &Expected, stored: &BTreeMap<String, BTreeMap<String, String>>) {
    let mut seen = BTreeSet::new();
    for line in lines {
        let entry = line["entry"].as_str().expect("entry").to_string();
        assert_eq!(line["version"], version(&stored[&entry]));
        assert_eq!(json_fields(line), public(&stored[&entry]));
        assert!(line.get("window_start_rfc3339").is_none(), "exactly the change feed's format: {line}");
        check_line(
            &{
                let mut with_times = line.clone();
                with_times["window_start_rfc3339"] = rfc3339(line["window_start"].as_i64().expect("ms")).into();
                with_times["window_end_rfc3339"] = rfc3339(line["window_end"].as_i64().expect("ms")).into();
                with_times
            },
            expected,
            stored,
        );
        assert!(seen.insert(entry.clone()), "{entry} exported twice");
    }
    assert_eq!(seen.len(), stored.len(), "{}: every entry", expected.region);
}

// ---------------------------------------------------------------------------
// Slot moves
// ---------------------------------------------------------------------------

/// The primary serving `slot`, by its own account.
fn owner(cluster: &RedisCluster, slot: u16) -> u16 {
    *cluster
        .primary_ports()
        .iter()
        .find(|&&port| {
            let nodes = text(cluster.node_cmd(port, &["CLUSTER", "NODES"]));
            let me = nodes.lines().find(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("myself")));
            me.expect("a myself line").split_whitespace().skip(8).any(|range| match range.split_once('-') {
                _ if range.starts_with('[') => false,
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot),
                None => range.parse::<u16>().unwrap() == slot,
            })
        })
        .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
}

/// Moves `slot` to another primary as `redis-cli --cluster reshard` does:
/// IMPORTING/MIGRATING, `MIGRATE` a few keys at a time with a pause between
/// batches (so that scans overlap the move), then `SETSLOT NODE` on the
/// target, the source and the rest.
fn move_slot(cluster: &RedisCluster, slot: u16, pause: Duration) {
    let from = owner(cluster, slot);
    let primaries = cluster.primary_ports();
    let to = *primaries.iter().find(|&&p| p != from).expect("another primary");
    let id = |port: u16| text(cluster.node_cmd(port, &["CLUSTER", "MYID"]));
    let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
    cluster.node_cmd(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.node_cmd(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    loop {
        let redis::Value::Array(keys) = cluster.node_cmd(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "5"]) else {
            panic!("GETKEYSINSLOT")
        };
        if keys.is_empty() {
            break;
        }
        let keys: Vec<String> = keys.into_iter().map(text).collect();
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        cluster.node_cmd(from, &args);
        std::thread::sleep(pause);
    }
    for port in [to, from].into_iter().chain(primaries.into_iter().filter(|p| *p != to && *p != from)) {
        cluster.node_cmd(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

/// Entries of region `moving`: `hot` and `warm` keys share one slot each
/// (hash tags), the rest spread over the cluster.
fn moving_entries() -> Vec<String> {
    let mut keys: Vec<String> = (0..400).map(|i| format!("{{hot}}u{i}")).collect();
    keys.extend((0..400).map(|i| format!("{{warm}}u{i}")));
    keys.extend((0..6000).map(|i| format!("u{i}")));
    keys.into_iter().map(|k| format!("rf:moving:{k}:1000")).collect()
}

/// Writes [`moving_entries`] with the merge function; returns the handle
/// and the entries' keys.
async fn write_moving_entries(cluster: &RedisCluster) -> (Arc<ClusterHandle>, BTreeSet<String>) {
    let handle = Arc::new(ClusterHandle::connect(&common::redis_config(cluster.urls(), 64)).await.expect("cluster"));
    let region = RedisRegion::new(
        handle.clone(),
        "moving",
        [(AggregateFunction::Count, "n")],
        64,
        Duration::from_secs(30),
        Metrics::new().redis_region("moving"),
    );
    let keys = moving_entries();
    let writes: Vec<EntryWrite> = keys
        .iter()
        .map(|key| EntryWrite {
            key: key.clone(),
            group: key.trim_start_matches("rf:moving:").trim_end_matches(":1000").into(),
            field: "_p:moving:0".into(),
            epoch: 1,
            offset: 1,
            mode: WriteMode::Replace,
            accumulators: vec![Accumulator::Count(1)],
            window: Window { start: 1000, end: 2000 },
            expiry: Expiry::Never,
            capture: Capture::Version,
            vouched: None,
        })
        .collect();
    region.write(&writes).await.expect("written");
    (handle, keys.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_during_slot_moves_lists_every_entry_once() {
    common::init_logging();
    let cluster = Arc::new(tokio::task::block_in_place(RedisCluster::start));
    let (handle, expected) = write_moving_entries(&cluster).await;

    let slots: Vec<u16> = ["hot", "warm"].iter().map(|t| regionflow::redis::key_slot(t.as_bytes())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicUsize::new(0));
    let mover = {
        let (cluster, stop, moves) = (cluster.clone(), stop.clone(), moves.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for &slot in &slots {
                    move_slot(&cluster, slot, Duration::from_millis(2));
                    moves.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[redis]\nnodes = {}\n{}",
        common::toml_nodes(&cluster.urls()),
        common::counting_pipeline("moving", "moving", "moving")
    );
    let config = write_config(dir.path(), &toml);
    let config = config.to_str().expect("UTF-8 path");

    let reader = RegionReader::new(handle.clone(), Duration::from_secs(10));
    let (mut scans, mut naive_misses) = (0, 0);
    let started = Instant::now();
    while scans < 30 || moves.load(Ordering::Relaxed) < 6 {
        assert!(started.elapsed() < Duration::from_secs(120), "{scans} scans, {moves:?} moves in 2 minutes");
        let listed = reader.keys("rf:moving:").await.expect("listed");
        let listed_once: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed_once.len(), listed.len(), "listed twice");
        assert_eq!(
            listed_once,
            expected,
            "scan {scans}: missing {:?}",
            expected.difference(&listed_once).take(5).collect::<Vec<_>>()
        );
        let naive: BTreeSet<String> = tokio::task::block_in_place(|| cluster.keys("rf:moving:*")).into_iter().collect();
        naive_misses += usize::from(naive != expected);
        scans += 1;
        if scans % 10 == 0 {
            // Through the binary too: every entry, each once.
            let (ok, stdout, stderr) = region("scan", config, "moving", &["--limit", "0", "--output", "json"]);
            assert!(ok, "{stderr}");
            let entries: Vec<String> =
                json_lines(&stdout).iter().map(|e| e["entry"].as_str().expect("entry").to_string()).collect();
            assert!(entries.windows(2).all(|w| w[0] < w[1]), "in key order, each once");
            assert_eq!(entries.into_iter().collect::<BTreeSet<_>>(), expected);
        }
    }
    stop.store(true, Ordering::Relaxed);
    tokio::task::block_in_place(|| mover.join()).expect("mover");
    // The moves did hide keys from a scan that does not look for them (in
    // about half the scans here), so the scans above were put to the test.
    assert!(naive_misses > 0, "no naive scan missed a key in {scans} scans: the moves never overlapped a scan");
    eprintln!(
        "{scans} scans during {} slot moves; a naive SCAN of each primary missed keys in {naive_misses}",
        moves.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------
// Bad arguments, no cluster
// ---------------------------------------------------------------------------

/// A configuration whose Redis seed is a closed port.
fn unreachable_config(dir: &Path) -> PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[redis]\nnodes = [\"redis://127.0.0.1:{closed}\"]\n{}{}",
        common::counting_pipeline("clicks", "clicks", "clicks"),
        common::counting_pipeline("views", "views", "page_views"),
    );
    write_config(dir, &toml)
}

#[test]
fn bad_arguments_are_refused_naming_what_to_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = unreachable_config(dir.path());
    let config = config.to_str().expect("UTF-8 path");
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["get", "--region", "nosuch", "--key", "a", "--window-start", "0"],
            &["writes region `nosuch`; the configured regions are `clicks`, `page_views`"],
        ),
        (&["scan", "--region", "nosuch"], &["no pipeline in", "writes region `nosuch`"]),
        (
            &["get", "--region", "clicks", "--key", "a", "--at", "1700000000000"],
            &["--at", "RFC 3339", "2024-05-01T12:00:00Z"],
        ),
        (&["scan", "--region", "clicks", "--from", "yesterday"], &["--from", "RFC 3339", "2024-05-01T12:00:00Z"]),
        (&["get", "--region", "clicks", "--key", "a", "--window-start", "noon"], &["--window-start"]),
        (&["get", "--region", "clicks", "--key", "a"], &["--window-start", "--at"]),
    ];
    for (args, expected) in cases {
        let started = Instant::now();
        let mut full = vec!["region", args[0], "--config", config];
        full.extend(&args[1..]);
        let (ok, stdout, stderr) = cli(&full);
        assert!(!ok && stdout.is_empty(), "{args:?} fails: {stdout}");
        for text in expected {
            assert!(stderr.contains(text), "{args:?}: {text:?} in {stderr}");
        }
        // Refused before any connection is tried.
        assert!(started.elapsed() < Duration::from_secs(3), "{args:?} took {:?}", started.elapsed());
    }
}

/// Like `checkpoints`, the region commands fail within seconds when Redis
/// is not there, where a connector (startup_timeout, default 30 s) waits.
#[test]
fn region_commands_fail_fast_when_redis_is_not_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = unreachable_config(dir.path());
    let config = config.to_str().expect("UTF-8 path");
    for args in [
        vec!["scan", "--region", "clicks"],
        vec!["get", "--region", "clicks", "--key", "a", "--at", "2024-05-01T12:00:00Z"],
        vec!["export", "--region", "page_views"],
    ] {
        let started = Instant::now();
        let mut full = vec!["region", args[0], "--config", config];
        full.extend(&args[1..]);
        let (ok, _, stderr) = cli(&full);
        assert!(!ok, "{args:?} fails");
        assert!(stderr.contains("cannot reach Redis Cluster"), "{args:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} within seconds: {:?}", started.elapsed());
    }
}

/// Scans running while a primary is killed and its replica takes over:
/// each either lists every entry (the dead node's slots read again on the
/// promoted replica) or fails saying so; none returns a partial list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_across_a_failover_is_complete_or_an_error() {
    common::init_logging();
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let (handle, expected) = write_moving_entries(&cluster).await;
    let reader = Arc::new(RegionReader::new(handle, Duration::from_secs(30)));
    let stop = Arc::new(AtomicBool::new(false));
    let scans = {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let listed = reader.keys("rf:moving:").await.map(|keys| keys.len());
                results.push((started..Instant::now(), listed));
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_primary_for_key("rf:moving:{hot}u1:1000"));
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = scans.await.expect("scans");
    // The primary dies between these two instants (after its replicas
    // caught up); count the scans that ran at some point in between.
    let during = results.iter().filter(|(ran, _)| ran.start < healed_at && ran.end > killed_at).count();
    assert!(during > 0, "a scan ran during the failover: {results:?}");
    for (ran, result) in &results {
        // The reader's deadline (30 s) and one round's response timeout,
        // not a response timeout per slot of the dead node.
        assert!(ran.end - ran.start < Duration::from_secs(60), "a scan took {:?}", ran.end - ran.start);
        match result {
            Ok(n) => assert_eq!(*n, expected.len(), "a complete list"),
            Err(e) => eprintln!("a scan failed: {e}"),
        }
    }
    let last = reader.keys("rf:moving:").await.expect("after the failover");
    assert_eq!(last.into_iter().collect::<BTreeSet<_>>(), expected);
    eprintln!(
        "{} scans, {during} during the failover, {} failed",
        results.len(),
        results.iter().filter(|(_, r)| r.is_err()).count()
    );
}
