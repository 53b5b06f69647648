//! The end-to-end scenario, shared by tests/integration/end_to_end.rs (local Redis
//! Cluster and librdkafka's mock broker) and tests/integration/containers.rs (the
//! official Apache Kafka and Redis images): three pipelines (tumbling,
//! sliding, session windows) over one data set with out-of-order and late
//! records and a group key (the customer) that differs from the Kafka key
//! (the order), so entries merge partials of several partitions. Every
//! region entry is compared with [`reference`], and the connector's own
//! metrics are checked against the data set.
//!
//! Nothing here knows where Kafka and Redis run: callers pass the brokers,
//! the Redis seed URLs and a way to list a region's keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;

use super::kafka::{self, Produce};
use super::prom_text::Exposition;
use super::reference::{self, Order, Table};
use super::InProcess;
use regionflow::config::Settings;

pub const PARTITIONS: i32 = 4;
pub const TOPICS: [(&str, i32); 3] = [("tumbling", PARTITIONS), ("sliding", PARTITIONS), ("session", PARTITIONS)];
const DISORDER_MS: i64 = 300;
const BASE_TS: i64 = 1_700_000_000_000;

/// Orders over ~24 s of event time: each up to `DISORDER_MS` behind the
/// stream's clock, and with `late` set, 1% of them 1.5 s behind (late for
/// some windows) and 0.5% a minute behind (late for all).
fn orders(seed: u64, n: usize, late: bool) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let clock = BASE_TS + 2 * i as i64;
            let roll = rng.random_range(0..1000);
            let ts = match roll {
                0..5 if late => clock - 60_000,
                5..15 if late => clock - 1_500,
                _ => clock - rng.random_range(0..=DISORDER_MS),
            };
            Order {
                partition: (i as i32) % PARTITIONS,
                customer: format!("c{}", rng.random_range(0..40)),
                product: format!("p{}", rng.random_range(0..25)),
                amount: rng.random_range(1..100_000) as f64 / 100.0,
                ts,
            }
        })
        .collect()
}

/// Records keyed by order (not the group key) as produced.
fn to_records(orders: &[Order]) -> Vec<Produce> {
    to_records_keyed(orders, |i, _| format!("order-{i}"))
}

fn to_records_keyed(orders: &[Order], key: impl Fn(usize, &Order) -> String) -> Vec<Produce> {
    orders
        .iter()
        .enumerate()
        .map(|(i, o)| Produce {
            partition: o.partition,
            key: Some(key(i, o)),
            value: serde_json::json!({
                "order": format!("order-{i}"),
                "customer": o.customer,
                "product": o.product,
                "amount": o.amount,
                "ts": o.ts,
            })
            .to_string()
            .into_bytes(),
        })
        .collect()
}

/// The data set and what each region must hold afterwards.
pub struct Scenario {
    with_late: Vec<Order>,
    on_time: Vec<Order>,
    tumbling: Table,
    tumbling_late: u64,
    sliding: Table,
    session: Table,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    pub fn new() -> Scenario {
        let with_late = orders(11, 12_000, true);
        // Sessions need a key's records in one partition: key and partition by customer.
        let on_time: Vec<Order> = orders(12, 6_000, false)
            .into_iter()
            .map(|o| Order { partition: o.customer[1..].parse::<i32>().expect("c<number>") % PARTITIONS, ..o })
            .collect();
        let (tumbling, tumbling_late) = reference::fixed_windows(&with_late, 2_000, 2_000, 0, DISORDER_MS, false);
        let (sliding, _) = reference::fixed_windows(&with_late, 4_000, 1_000, 500, DISORDER_MS, true);
        let session = reference::sessions(&on_time, 150);
        assert!(tumbling_late > 0, "the data set has records late for all their windows");
        Scenario { with_late, on_time, tumbling, tumbling_late, sliding, session }
    }

    /// Produces the data set to the three topics (which must exist).
    pub async fn produce(&self, brokers: &str) {
        kafka::produce(brokers, "tumbling", &to_records(&self.with_late)).await;
        kafka::produce(brokers, "sliding", &to_records(&self.with_late)).await;
        kafka::produce(brokers, "session", &to_records_keyed(&self.on_time, |_, o| o.customer.clone())).await;
    }

    /// The connector's configuration for `brokers` and the Redis Cluster
    /// seeded by `redis_urls`.
    pub fn settings(&self, brokers: &str, redis_urls: &[String], group: &str) -> Settings {
        self.settings_with_redis(brokers, redis_urls, group, "")
    }

    /// As [`Scenario::settings`], with `redis_keys` (TOML lines) added to
    /// the `[redis]` table, e.g. credentials and TLS.
    pub fn settings_with_redis(&self, brokers: &str, redis_urls: &[String], group: &str, redis_keys: &str) -> Settings {
        let pipeline = |name: &str, window: &str, extra: &str, region: &str| {
            format!(
                r#"
[pipelines.{name}]
topics = ["{name}"]
event_time = {{ from = "field", pointer = "/ts", format = "epoch_millis" }}
window = {window}
watermark = {{ max_out_of_orderness = "{DISORDER_MS}ms", idle_timeout = "3s" }}
{extra}
region = {region}
[pipelines.{name}.aggregates]
{aggregates}
"#,
                aggregates = reference::AGGREGATES
            )
        };
        let toml = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
startup_timeout = "20s"

[redis]
nodes = {nodes}
key_prefix = "rf"
{redis_keys}
[connector]
flush_interval = "100ms"
{tumbling}{sliding}{session}"#,
            nodes = super::toml_nodes(redis_urls),
            tumbling = pipeline(
                "tumbling",
                r#"{ kind = "tumbling", size = "2s" }"#,
                "key = { from = \"field\", pointer = \"/customer\" }\nlate_records = \"drop\"",
                r#"{ name = "tumbling_orders", key = "{key}:{window_start}", ttl = "1h" }"#
            ),
            sliding = pipeline(
                "sliding",
                r#"{ kind = "sliding", size = "4s", slide = "1s" }"#,
                "key = { from = \"field\", pointer = \"/customer\" }\nallowed_lateness = \"500ms\"\nlate_records = \"amend\"\n\
                 emit = { mode = \"updates\", interval = \"300ms\" }",
                r#"{ name = "sliding_orders", key = "{key}:{window_start}", ttl = "3650days", ttl_from = "window_end" }"#
            ),
            session = pipeline(
                "session",
                r#"{ kind = "session", gap = "150ms" }"#,
                "key = { from = \"kafka_key\" }\nlate_records = \"drop\"\nemit = { mode = \"updates\", interval = \"100ms\" }",
                r#"{ name = "session_orders", key = "{key}:{window_start}:{window_end}" }"#
            ),
        );
        Settings::from_toml_str(&toml).expect("test configuration is valid")
    }

    /// Waits (up to `timeout`) until every region equals the reference,
    /// then checks the entries' TTLs; panics with the differences otherwise.
    /// `keys` lists the keys matching a pattern across the cluster.
    pub async fn check_regions(
        &self,
        redis_urls: &[String],
        keys: impl Fn(&str) -> Vec<String>,
        connector: &InProcess,
        timeout: Duration,
    ) {
        let client = redis::cluster::ClusterClient::new(redis_urls.to_vec()).expect("cluster client");
        self.check_regions_with(&client, keys, connector, timeout).await
    }

    /// As [`Scenario::check_regions`], reading through `client` (e.g. one
    /// with TLS and credentials).
    pub async fn check_regions_with(
        &self,
        client: &redis::cluster::ClusterClient,
        keys: impl Fn(&str) -> Vec<String>,
        connector: &InProcess,
        timeout: Duration,
    ) {
        let mut con = client.get_async_connection().await.expect("cluster connection");
        let deadline = Instant::now() + timeout;
        let mut last = Err(String::new());
        while Instant::now() < deadline {
            last = async {
                compare(&mut con, &keys, "tumbling_orders", &self.tumbling, |c, s, _| {
                    format!("rf:tumbling_orders:{c}:{s}")
                })
                .await?;
                compare(&mut con, &keys, "sliding_orders", &self.sliding, |c, s, _| {
                    format!("rf:sliding_orders:{c}:{s}")
                })
                .await?;
                compare(&mut con, &keys, "session_orders", &self.session, |c, s, e| {
                    format!("rf:session_orders:{c}:{s}:{e}")
                })
                .await
            }
            .await;
            if last.is_ok() {
                break;
            }
            assert!(!connector.handle.is_finished(), "connector stopped early: {:?}", last);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last.expect("regions equal the reference");

        // TTLs: relative to the write, relative to the window end, and none.
        let now = regionflow::time::now_millis();
        let (k, _) = self.tumbling.iter().next().expect("non-empty");
        let ttl: i64 = con.pttl(format!("rf:tumbling_orders:{}:{}", k.0, k.1)).await.expect("PTTL");
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "tumbling entry expires an hour after its write, PTTL {ttl}");
        let ((c, s), e) = self.sliding.iter().next().expect("non-empty");
        let ttl: i64 = con.pttl(format!("rf:sliding_orders:{c}:{s}")).await.expect("PTTL");
        let want = e.window_end + 3650 * 86_400_000 - now;
        assert!(
            (ttl - want).abs() < 120_000,
            "sliding entry expires 3650 days after its window end: PTTL {ttl}, expected ~{want}"
        );
        let ((c, s), e) = self.session.iter().next().expect("non-empty");
        let ttl: i64 = con.pttl(format!("rf:session_orders:{c}:{s}:{}", e.window_end)).await.expect("PTTL");
        assert_eq!(ttl, -1, "session entries do not expire");
    }

    /// Checks the connector's metrics against the data set, once the
    /// regions are complete: records in, late records, amendments, bytes
    /// sent to Redis, and consumer lag back at 0 on every partition.
    pub async fn check_metrics(&self, connector: &InProcess) {
        let metrics = Exposition::parse(&connector.metrics.render());
        assert_eq!(
            metrics.sum("regionflow_records_in_total", &[("pipeline", "tumbling")]),
            self.with_late.len() as f64
        );
        assert_eq!(
            metrics.sum("regionflow_late_records_total", &[("action", "drop"), ("pipeline", "tumbling")]),
            self.tumbling_late as f64
        );
        assert!(
            metrics.sum("regionflow_windows_fired_total", &[("kind", "amend"), ("pipeline", "sliding")]) > 0.0,
            "late records amended"
        );
        // Sliding and session windows emit updates: running values were
        // written, and every (key, window) fired as final, written or not.
        // The region can be complete before the last finals fire: updates
        // already wrote their values, and the last windows close when the
        // idle timeout (3 s) moves the watermark on.
        for (pipeline, table) in [("sliding", &self.sliding), ("session", &self.session)] {
            let updates = metrics.sum("regionflow_windows_fired_total", &[("kind", "update"), ("pipeline", pipeline)]);
            assert!(updates > 0.0, "{pipeline}: updates emitted");
            let started = Instant::now();
            loop {
                let metrics = Exposition::parse(&connector.metrics.render());
                let finals =
                    metrics.sum("regionflow_windows_fired_total", &[("kind", "final"), ("pipeline", pipeline)]);
                if finals >= table.len() as f64 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{pipeline}: {finals} finals for {} entries",
                    table.len()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }

        // Bytes out: every entry was written at least once with its key, and
        // a write (key, partial field, partial JSON of eight aggregates, the
        // distinct count a 2 KiB hex HyperLogLog) is hundreds to a few
        // thousand bytes: neither one per write or record nor a multiple.
        for (pipeline, region, table) in [
            ("tumbling", "tumbling_orders", &self.tumbling),
            ("sliding", "sliding_orders", &self.sliding),
            ("session", "session_orders", &self.session),
        ] {
            let bytes = metrics.sum("regionflow_bytes_out_total", &[("pipeline", pipeline)]);
            let writes = metrics.sum("regionflow_region_writes_total", &[("outcome", "applied"), ("region", region)])
                + metrics.sum("regionflow_region_writes_total", &[("outcome", "stale"), ("region", region)]);
            let key_bytes: usize =
                table.keys().map(|(customer, start)| format!("rf:{region}:{customer}:{start}").len()).sum();
            assert!(
                bytes >= key_bytes as f64,
                "{pipeline}: regionflow_bytes_out_total {bytes} is below the bytes of its {} entries' keys alone ({key_bytes})",
                table.len()
            );
            assert!(writes > 0.0, "{pipeline}: entry writes counted");
            let per_write = bytes / writes;
            assert!(
                (100.0..4_096.0).contains(&per_write),
                "{pipeline}: {per_write:.0} bytes out per entry write ({bytes} bytes, {writes} writes); \
                 expected key + partial field + partial JSON"
            );
        }

        // Consumer lag: one series per owned partition, all at 0 once the
        // input is consumed (the high watermarks arrive every 500 ms).
        let started = Instant::now();
        loop {
            let metrics = Exposition::parse(&connector.metrics.render());
            let lags: Vec<(&BTreeMap<String, String>, f64)> =
                metrics.matching("regionflow_consumer_lag_records", &[]).map(|s| (&s.labels, s.value)).collect();
            let expected = TOPICS.len() * PARTITIONS as usize;
            if lags.len() == expected && lags.iter().all(|(_, lag)| *lag == 0.0) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "consumer lag is not 0 on all {expected} owned partitions 15 s after the regions were complete: {lags:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn hgetall_region(
    con: &mut redis::cluster_async::ClusterConnection,
    keys: &[String],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = con.hgetall(key).await.expect("HGETALL");
        // A deleted entry's tombstone (fences, version) is no entry, as
        // readers see it.
        if fields.contains_key("window_start") {
            out.insert(key.clone(), fields.into_iter().filter(|(k, _)| !k.starts_with('_')).collect());
        }
    }
    out
}

/// Compares the region with the reference; `Err` describes the differences.
async fn compare(
    con: &mut redis::cluster_async::ClusterConnection,
    keys: &impl Fn(&str) -> Vec<String>,
    region: &str,
    expected: &Table,
    key_of: impl Fn(&str, i64, i64) -> String,
) -> Result<(), String> {
    let want: BTreeMap<String, (&(String, i64), &reference::Expected)> =
        expected.iter().map(|(k, e)| (key_of(&k.0, k.1, e.window_end), (k, e))).collect();
    let present = tokio::task::block_in_place(|| keys(&format!("rf:{region}:*")));
    let entries = hgetall_region(con, &present).await;
    let mut problems = Vec::new();
    for key in want.keys().filter(|k| !entries.contains_key(*k)) {
        problems.push(format!("missing {key}"));
    }
    for key in entries.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("unexpected {key}: {:?}", entries[key]));
    }
    for (key, ((_, start), e)) in &want {
        if let Some(fields) = entries.get(key) {
            if let Err(p) = reference::check_entry(fields, *start, e) {
                problems.push(format!("{key}: {p}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} entries differ, e.g. {:?}",
            problems.len(),
            want.len(),
            &problems[..problems.len().min(5)]
        ))
    }
}
