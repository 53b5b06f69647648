//! Observability end to end: every Grafana panel query and every Prometheus
//! rule returns data from a real scrape of running connectors.
//!
//! The test starts a real six-node Redis Cluster, a Kafka-protocol broker
//! (librdkafka's mock cluster over TCP), and a real Prometheus (Debian's
//! `prometheus`) that scrapes the connectors every second and evaluates
//! prometheus/rules/regionflow.yml every second. It runs the `regionflow`
//! binary as child processes and produces page views (with malformed and
//! late ones, so the dead-letter series move) the whole time, through a
//! failover:
//!
//! 1. connector A starts alone and owns every partition;
//! 2. connector B joins the group and takes partitions over from A;
//! 3. A is killed (SIGKILL); B takes over A's partitions.
//!
//! Then, through Prometheus' HTTP API, it evaluates every target expression
//! of every panel of every dashboard in grafana/dashboards (with `$pipeline`
//! and the other variables as `.*` and `$__rate_interval` as 1m), every
//! template variable query, every recording rule (its expression and its
//! output series) and the signals of every alert (the expression without
//! its threshold comparisons; see the header of the rules file). Each must
//! return at least one sample that is not NaN: an empty result or only NaN
//! (e.g. a quantile of a histogram that was never observed) is an empty
//! panel for the operator. It also checks that the scenario really moved
//! the counters the dashboards are about, and runs `promtool check metrics`
//! on the scraped text.

use crate::common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use common::connector::Connector;
use common::kafka::Kafka;
use common::prom_text::Exposition;
use common::prometheus::{
    alert_signals, dashboard_files, dashboard_queries, load_dashboard, parse_label_values, parse_promql, repo_root,
    substitute_variables, variable_queries, DashboardVariables, Prometheus,
};
use common::redis_cluster::RedisCluster;

const PARTITIONS: i32 = 4;
/// What `$__rate_interval` becomes: covers the whole scenario.
const RATE_INTERVAL: &str = "1m";
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters the scenario must have moved (increase over the run > 0): the
/// dashboards show them, and an always-zero panel would prove nothing.
const ACTIVITY: &[(&str, &str)] = &[
    ("records consumed", "sum(increase(regionflow_records_in_total[10m]))"),
    ("bytes consumed", "sum(increase(regionflow_bytes_in_total[10m]))"),
    ("results written to the region", "sum(increase(regionflow_records_out_total[10m]))"),
    ("bytes sent to Redis", "sum(increase(regionflow_bytes_out_total[10m]))"),
    ("final windows fired", r#"sum(increase(regionflow_windows_fired_total{kind="final"}[10m]))"#),
    ("unparsable records dead-lettered", r#"sum(increase(regionflow_dlq_records_total{stage="parse"}[10m]))"#),
    ("late records dead-lettered", r#"sum(increase(regionflow_late_records_total{action="dead_letter"}[10m]))"#),
    ("Redis writes", r#"sum(increase(regionflow_redis_operations_total{outcome="ok"}[10m]))"#),
    ("Redis write batches timed", "sum(increase(regionflow_redis_write_duration_seconds_count[10m]))"),
    ("partition assignments", r#"sum(increase(regionflow_rebalances_total{kind="assign"}[10m]))"#),
    ("partition revocations", r#"sum(increase(regionflow_rebalances_total{kind="revoke"}[10m]))"#),
    ("checkpoints stored", r#"sum(increase(regionflow_checkpoints_total{outcome="ok"}[10m]))"#),
    ("checkpoint bytes stored", "sum(increase(regionflow_checkpoint_bytes_total[10m]))"),
    ("checkpoint durations observed", "sum(increase(regionflow_checkpoint_duration_seconds_count[10m]))"),
    ("partition takeovers", "sum(increase(regionflow_partition_takeovers_total[10m]))"),
    ("recovery times observed", "sum(increase(regionflow_recovery_duration_seconds_count[10m]))"),
    ("region changes published", "sum(increase(regionflow_changes_published_total[10m]))"),
];

fn connector_config(brokers: &str, redis_nodes: &[String]) -> String {
    let nodes: Vec<String> = redis_nodes.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"# Written by tests/integration/observability.rs; metrics.listen is set per process
# with REGIONFLOW__METRICS__LISTEN (tests/common/connector.rs).
[kafka]
brokers = "{brokers}"
group_id = "observability"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
startup_timeout = "20s"

[redis]
nodes = [{nodes}]
key_prefix = "rf"

[metrics]
listen = "127.0.0.1:9464"

[connector]
flush_interval = "100ms"
checkpoint_interval = "1s"
shutdown_timeout = "5s"

[pipelines.pageviews]
topics = ["pageviews"]
key = {{ from = "field", pointer = "/page" }}
event_time = {{ from = "field", pointer = "/ts", format = "epoch_millis" }}
window = {{ kind = "tumbling", size = "2s" }}
watermark = {{ max_out_of_orderness = "500ms", idle_timeout = "2s" }}
late_records = "dead_letter"
errors = {{ tolerance = "all", deadletterqueue_topic_name = "pageviews-dlq" }}

[pipelines.pageviews.aggregates]
views = {{ function = "count" }}
unique_users = {{ function = "distinct_count", field = "/user" }}
avg_duration_ms = {{ function = "avg", field = "/duration_ms" }}

[pipelines.pageviews.region]
name = "page_views"
key = "{{key}}:{{window_start}}"
ttl = "10m"
redundancy = 1
changes = {{ topic = "page-views-changes", mode = "final" }}
"#,
        nodes = nodes.join(", ")
    )
}

/// Partitions a connector owns, from its own /metrics (None: no answer).
fn owned(connector: &Connector) -> Option<i64> {
    connector.scrape().map(|text| Exposition::parse(&text).sum("regionflow_partitions_owned", &[]) as i64)
}

fn address(connector: &Connector) -> String {
    format!("127.0.0.1:{}", connector.metrics_port)
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// About 400 page views per second until stopped: 1% unparsable, 1%
/// without an event time, 2% a minute late (dead-lettered as late).
async fn produce_page_views(producer: FutureProducer, stop: CancellationToken) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        let now = now_millis();
        for _ in 0..8 {
            n += 1;
            let user = rng.random_range(0..500);
            let page = rng.random_range(0..20);
            let duration = rng.random_range(100..30_000);
            let value = match n % 100 {
                0 => format!(r#"{{"user":"u{user}","page":"#),
                50 => format!(r#"{{"user":"u{user}","page":"/page/{page}","duration_ms":{duration}}}"#),
                25 | 75 => format!(
                    r#"{{"user":"u{user}","page":"/page/{page}","ts":{},"duration_ms":{duration},"country":"DE"}}"#,
                    now - 60_000
                ),
                _ => format!(
                    r#"{{"user":"u{user}","page":"/page/{page}","ts":{},"duration_ms":{duration},"country":"NL"}}"#,
                    now - rng.random_range(0..300)
                ),
            };
            let key = format!("u{user}");
            if producer.send_result(FutureRecord::to("pageviews").key(&key).payload(&value)).is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
        }
    }
}

/// Polls `done` until it holds (true) or `timeout` passes (false).
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !tokio::task::block_in_place(&mut done) {
        if started.elapsed() > timeout {
            eprintln!("timed out after {timeout:?} waiting for {what}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("        {what} (after {:.1}s)", started.elapsed().as_secs_f64());
    true
}

/// Why a query's result is no good for a panel, if it is not.
fn no_data(prometheus: &Prometheus, expr: &str) -> Option<String> {
    match prometheus.query(expr) {
        Err(e) => Some(format!("query failed: {e}")),
        Ok(samples) if samples.is_empty() => Some("no data (empty result)".into()),
        Ok(samples) if samples.iter().all(|s| s.value.is_nan()) => {
            Some(format!("only NaN ({} series; nothing observed in the window)", samples.len()))
        }
        Ok(_) => None,
    }
}

struct Report {
    checked: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, prometheus: &Prometheus, what: String, expr: &str) {
        self.checked += 1;
        if let Some(why) = no_data(prometheus, expr) {
            self.failures.push(format!("{what}\n      {expr}\n      → {why}"));
        }
    }
}

fn evaluate_dashboards(prometheus: &Prometheus, report: &mut Report) {
    for path in dashboard_files() {
        let dashboard = load_dashboard(&path);
        let file = path.file_name().expect("file name").to_string_lossy().to_string();
        for (name, query) in variable_queries(&dashboard) {
            let (selector, label) = parse_label_values(&query)
                .unwrap_or_else(|| panic!("{file} variable {name}: expected label_values(...), got {query:?}"));
            let selector = substitute_variables(&selector, RATE_INTERVAL, DashboardVariables::MatchAll);
            report.checked += 1;
            match prometheus.query(&selector) {
                Ok(samples) if samples.iter().any(|s| s.labels.contains_key(&label)) => {}
                Ok(_) => report.failures.push(format!(
                    "{file} variable ${name}\n      {query}\n      → no series of {selector} has label {label}"
                )),
                Err(e) => report.failures.push(format!("{file} variable ${name}\n      {query}\n      → {e}")),
            }
        }
        let queries = dashboard_queries(&path);
        assert!(!queries.is_empty(), "{file} has no panel queries");
        for q in queries {
            let expr = substitute_variables(&q.expr, RATE_INTERVAL, DashboardVariables::MatchAll);
            report.check(prometheus, q.to_string(), &expr);
        }
    }
}

fn evaluate_rules(prometheus: &Prometheus, report: &mut Report) {
    let rules = prometheus.rules().expect("rules API");
    let recording = rules.iter().filter(|r| r.kind == "recording").count();
    let alerting = rules.iter().filter(|r| r.kind == "alerting").count();
    assert!(recording > 0 && alerting > 0, "Prometheus loaded {recording} recording and {alerting} alerting rules");
    for rule in &rules {
        if rule.health != "ok" || rule.last_error.is_some() {
            report.failures.push(format!(
                "rule {} ({}): health {:?}, last error {:?}",
                rule.name, rule.group, rule.health, rule.last_error
            ));
        }
        match rule.kind.as_str() {
            "recording" => {
                report.check(prometheus, format!("recording rule {} (expression)", rule.name), &rule.query);
                report.check(prometheus, format!("recording rule {} (recorded series)", rule.name), &rule.name);
            }
            _ => {
                let signals = match parse_promql(&rule.query) {
                    Ok(expr) => alert_signals(&expr),
                    Err(e) => {
                        report.failures.push(format!("alert {}: {e}", rule.name));
                        continue;
                    }
                };
                for (i, signal) in signals.iter().enumerate() {
                    report.check(
                        prometheus,
                        format!("alert {} signal {}/{} of `{}`", rule.name, i + 1, signals.len(), rule.query),
                        &signal.to_string(),
                    );
                }
            }
        }
    }
}

fn evaluate_activity(prometheus: &Prometheus, report: &mut Report) {
    for (what, expr) in ACTIVITY {
        report.checked += 1;
        match prometheus.query(expr) {
            Ok(samples) if samples.iter().any(|s| s.value > 0.0) => {}
            Ok(samples) => report.failures.push(format!(
                "scenario: expected {what}\n      {expr}\n      → {}",
                if samples.is_empty() { "no data".to_string() } else { format!("{}", samples[0].value) }
            )),
            Err(e) => report.failures.push(format!("scenario: {what}\n      {expr}\n      → {e}")),
        }
    }
}

fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (scripts/setup-test-deps.sh installs it): {e}"))?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_rule_returns_data_from_running_connectors() {
    common::init_logging();
    let started = Instant::now();
    let redis = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("pageviews", PARTITIONS), ("pageviews-dlq", 1), ("page-views-changes", PARTITIONS)]);
    let dir = tempfile::Builder::new().prefix("regionflow-observability-").tempdir().expect("temp dir");
    let config = dir.path().join("regionflow.toml");
    fs::write(&config, connector_config(&kafka.brokers, &redis.urls())).expect("write config");

    let rules = repo_root().join("prometheus/rules/regionflow.yml");
    let prometheus = tokio::task::block_in_place(|| Prometheus::start(&[], &[rules]));
    eprintln!(
        "[{:>5.1}s] Redis Cluster, Kafka and Prometheus ({}) up",
        started.elapsed().as_secs_f64(),
        prometheus.address
    );

    let stop = CancellationToken::new();
    let load = tokio::spawn(produce_page_views(kafka.producer(), stop.clone()));

    // 1. Connector A alone owns every partition.
    let mut a = tokio::task::block_in_place(|| Connector::start("connector-a", &config, dir.path()));
    prometheus.add_target(&address(&a));
    let ok = wait_for("connector A owns every partition", PHASE_TIMEOUT, || owned(&a) == Some(PARTITIONS as i64)).await;
    assert!(ok, "connector A did not take the partitions");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Connector B joins the group and takes partitions over from A.
    let b = tokio::task::block_in_place(|| Connector::start("connector-b", &config, dir.path()));
    prometheus.add_target(&address(&b));
    let ok = wait_for(
        "connector B took partitions over from A",
        PHASE_TIMEOUT,
        || matches!((owned(&a), owned(&b)), (Some(x), Some(y)) if y > 0 && x + y == PARTITIONS as i64),
    )
    .await;
    assert!(ok, "the group did not rebalance onto B");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. A crashes; B takes over its partitions after the session timeout.
    a.kill();
    let ok = wait_for("connector B owns every partition after A was killed", PHASE_TIMEOUT, || {
        owned(&b) == Some(PARTITIONS as i64)
    })
    .await;
    assert!(ok, "B did not take over A's partitions");
    // A few more scrapes and rule evaluations with B alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("[{:>5.1}s] scenario done; evaluating queries", started.elapsed().as_secs_f64());

    let mut report = Report { checked: 0, failures: Vec::new() };
    tokio::task::block_in_place(|| {
        let up: Vec<_> = prometheus.targets().expect("targets API");
        assert!(
            up.iter().any(|(url, health, _)| url.contains(&address(&b)) && health == "up"),
            "Prometheus does not scrape connector B successfully: {up:?}"
        );
        evaluate_dashboards(&prometheus, &mut report);
        evaluate_rules(&prometheus, &mut report);
        evaluate_activity(&prometheus, &mut report);
        let text = b.scrape().expect("connector B serves /metrics");
        if let Err(e) = promtool_check_metrics(&text) {
            report.failures.push(e);
        }
    });
    stop.cancel();
    let _ = load.await;
    eprintln!(
        "[{:>5.1}s] {} checks, {} failed",
        started.elapsed().as_secs_f64(),
        report.checked,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} dashboard/rule/scenario checks returned no data from the running connectors; \
         an operator would see these panels empty or these alerts dead:\n\n  - {}\n",
        report.failures.len(),
        report.checked,
        report.failures.join("\n  - "),
    );
}
