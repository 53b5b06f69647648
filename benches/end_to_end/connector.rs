//! The connector run: the connector child (`crate::child`) over a data set
//! already in Kafka, until the region has acknowledged every entry the
//! compute run fired; its throughput, cost per event and peak RSS.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use regionflow::time::now_millis;

use crate::data::DataSet;
use crate::feed::{wait_published, Feed, FeedTopic};
use crate::net::free_port;
use crate::options::Options;
use crate::process::{cpu_seconds, kafka_threads_cpu_seconds, status_bytes};
use crate::prom_text::Exposition;
use crate::sink_ceiling::{all_calls, Redis};
use crate::support::{self, Workload};

// The connector run.

fn scrape(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

pub struct ConnectorChild {
    pub child: Child,
    pub port: u16,
    pub report: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl ConnectorChild {
    /// `tuning`: the run's settings (see `support::settings_toml`).
    /// `per_entry` (the live latency run): the child also times each entry's
    /// last write, which costs a map entry per entry.
    pub fn start(
        workload: Workload,
        brokers: &str,
        redis_nodes: &[String],
        group: &str,
        topic: &str,
        tuning: &support::Tuning<'_>,
        per_entry: bool,
    ) -> ConnectorChild {
        let dir = tempfile::Builder::new().prefix("regionflow-bench-").tempdir().expect("temp dir");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let toml = support::settings_toml(
            workload,
            &support::Endpoints { brokers, redis_nodes, group, topic, metrics_listen: &listen },
            tuning,
        );
        let config = dir.path().join("connector.toml");
        std::fs::write(&config, toml).expect("config written");
        let report = dir.path().join("report.txt");
        let child = Command::new(std::env::current_exe().expect("own executable"))
            .env("BENCH_ROLE", "connector")
            .env("BENCH_CONFIG", &config)
            .env("BENCH_REPORT", &report)
            .env("BENCH_PER_ENTRY", if per_entry { "1" } else { "" })
            .spawn()
            .expect("connector child started");
        ConnectorChild { child, port, report, _dir: dir }
    }

    pub fn metrics(&self) -> Option<String> {
        scrape(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the connector owns every partition.
    pub fn wait_ready(&mut self, partitions: i32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("connector exited early: {status}");
            }
            if let Some(text) = self.metrics() {
                if Exposition::parse(&text).sum("regionflow_partitions_owned", &[]) >= partitions as f64 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "connector did not take its partitions within 60s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and read the report.
    /// Tells the child that windows ending at or before `watermark` are
    /// closed (see `closed_by`).
    pub fn closed_by(&self, watermark: i64) {
        std::fs::write(self.report.with_extension("closed"), watermark.to_string()).expect("closed_by written");
    }

    pub fn stop(mut self) -> HashMap<String, String> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().expect("child status").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        std::fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }
}

impl Drop for ConnectorChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Default, Clone)]
pub struct Run {
    pub events_per_s: f64,
    pub bytes_per_s: f64,
    pub entries_per_s: f64,
    pub seconds: f64,
    pub commands_per_event: f64,
    pub merges_per_event: f64,
    pub script_inner_per_event: f64,
    /// Redis's own time per `FCALL` in this run (commandstats usec/calls).
    pub redis_us_per_merge: f64,
    /// Redis's own time per event in the merge function, and in scripts
    /// (`EVAL`/`EVALSHA`: checkpoints and the session ledger).
    pub redis_us_per_event_fcall: f64,
    pub redis_us_per_event_scripts: f64,
    pub peak_rss: u64,
    pub cpu_us_per_event: f64,
    /// Of the connector's CPU, its Kafka client threads' (see
    /// `process::kafka_threads_cpu_seconds`).
    pub kafka_threads_cpu_us_per_event: f64,
    pub harness_cpu_us_per_event: f64,
    pub written: u64,
    /// With a change feed: what it published.
    pub feed: Option<Feed>,
    pub note: String,
}

/// What every connector run over one data set shares.
pub struct ConnectorRun<'a> {
    pub redis: &'a Redis,
    pub workload: Workload,
    pub brokers: &'a str,
    pub redis_nodes: &'a [String],
    pub data: &'a DataSet,
    /// Entry writes the compute run fired: the run is done when the region
    /// has acknowledged as many.
    pub expected: u64,
    /// Commands one merge function run issues (from the sink ceiling).
    pub inner_per_script: f64,
    pub opts: &'a Options,
    pub ticks: f64,
}

impl ConnectorRun<'_> {
    /// One connector run over the data set. `variant` names it (its
    /// consumer group and profile: each run needs a group of its own, a
    /// group resumes from its committed offsets); `changes`: the region's
    /// change feed topic, if the run has one. A feed run ends when the
    /// region has every write and the topic every change, so its time
    /// covers the publication too.
    pub async fn run(&self, variant: &str, changes: Option<&str>) -> Run {
        let (redis, workload, data, opts) = (self.redis, self.workload, self.data, self.opts);
        redis.flush_all().await;
        let group = format!("bench-{}-{}{variant}", workload.name(), data.topic);
        let feed_topic = changes.map(|topic| FeedTopic::new(self.brokers, topic, data.partitions));
        let tuning = support::Tuning { changes, ..Default::default() };
        let mut child =
            ConnectorChild::start(workload, self.brokers, self.redis_nodes, &group, &data.topic, &tuning, false);
        let pid = child.pid();
        // BENCH_PROFILE_DIR: sample the connector with `perf record` while it
        // runs; with BENCH_PROFILE_SYSTEM=1 every process on the machine (Redis,
        // the mock brokers, the connector), to see which one the time goes to.
        let mut perf = std::env::var("BENCH_PROFILE_DIR").ok().map(|dir| {
            let out = format!("{dir}/perf-{}-{}{variant}.data", workload.name(), data.name);
            let pid = pid.to_string();
            let target = match std::env::var("BENCH_PROFILE_SYSTEM").as_deref() {
                Ok("1") => vec!["-a", "-g"],
                _ => vec!["--call-graph", "dwarf,16384", "-p", &pid],
            };
            Command::new("perf")
                .args(["record", "-F", "499", "-o", &out])
                .args(target)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf record started")
        });
        let mut run = Run::default();
        // Records flow as soon as the group assigns the partitions; stats are
        // reset before that.
        redis.reset_stats().await;
        let region = format!("bench_{}", workload.name().to_ascii_lowercase());
        let applied = [("region", region.as_str()), ("outcome", "applied")];
        let deadline = Instant::now() + opts.run_timeout;
        // When the first record was consumed: (wall clock, connector CPU,
        // its Kafka threads' CPU, harness CPU).
        let mut t0: Option<(i64, f64, f64, f64)> = None;
        let mut last_text = String::new();
        let mut written = 0.0;
        loop {
            if let Some(status) = child.child.try_wait().expect("child status") {
                run.note = format!("connector exited: {status}");
                break;
            }
            let text = child.metrics().unwrap_or_default();
            let metrics = Exposition::parse(&text);
            let records = metrics.sum("regionflow_records_in_total", &[]);
            written = metrics.sum("regionflow_region_writes_total", &applied);
            if t0.is_none() && records > 0.0 {
                t0 = Some((
                    now_millis(),
                    cpu_seconds(pid, self.ticks),
                    kafka_threads_cpu_seconds(pid, self.ticks),
                    cpu_seconds(std::process::id(), self.ticks),
                ));
            }
            if !text.is_empty() {
                last_text = text;
            }
            if written >= self.expected as f64 {
                break;
            }
            if Instant::now() > deadline {
                run.note = format!("timed out: {written} of {} entries written", self.expected);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A feed run goes on until the topic holds a change per entry write.
        let mut feed = None;
        if let Some(topic) = &feed_topic {
            let mut figures = Feed::default();
            loop {
                figures.appended = topic.appended();
                if figures.appended as f64 >= written || written < self.expected as f64 {
                    break;
                }
                if Instant::now() > deadline {
                    run.note = format!("{} timed out: {} of {written} changes appended", run.note, figures.appended);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            feed = Some((figures, now_millis()));
        }
        let cpu_child = cpu_seconds(pid, self.ticks);
        let cpu_kafka = kafka_threads_cpu_seconds(pid, self.ticks);
        let cpu_harness = cpu_seconds(std::process::id(), self.ticks);
        if let Some(mut perf) = perf.take() {
            let _ = Command::new("kill").arg("-INT").arg(perf.id().to_string()).status();
            let _ = perf.wait();
        }
        run.peak_rss = status_bytes(pid, "VmHWM:");
        let counters = redis.counters().await;
        if let Some((feed, _)) = &mut feed {
            // Tasks count published changes when they settle them, before
            // each checkpoint (every 5 s): wait for that, outside the
            // measured time.
            feed.published = wait_published(&child, &region, written, Duration::from_secs(30)).await;
        }
        let report = child.stop();
        if let Some(e) = report.get("error") {
            run.note = format!("{} connector error: {e}", run.note);
        }
        let Some((t0_ms, cpu0, kafka0, harness0)) = t0 else {
            run.note = format!("{} no record consumed", run.note);
            return run;
        };
        let last_ack: i64 = report.get("last_ack_ms").and_then(|v| v.parse().ok()).unwrap_or(now_millis());
        let end = feed.as_ref().map_or(last_ack, |(_, appended_at)| last_ack.max(*appended_at));
        let seconds = ((end - t0_ms) as f64 / 1000.0).max(1e-3);
        let n = data.len() as f64;
        run.seconds = seconds;
        let last_metrics = Exposition::parse(&last_text);
        run.written = last_metrics.sum("regionflow_region_writes_total", &applied) as u64;
        run.events_per_s = n / seconds;
        run.bytes_per_s = last_metrics.sum("regionflow_bytes_in_total", &[]) / seconds;
        run.entries_per_s = run.written as f64 / seconds;
        run.cpu_us_per_event = (cpu_child - cpu0) * 1e6 / n;
        run.kafka_threads_cpu_us_per_event = (cpu_kafka - kafka0) * 1e6 / n;
        run.harness_cpu_us_per_event = (cpu_harness - harness0) * 1e6 / n;
        let get = |k: &str| *counters.get(k).unwrap_or(&0) as f64;
        // Commandstats also count the commands a script runs (`redis.call`);
        // the sink ceiling's FCALL-only run gives how many one merge runs, so
        // client commands are the rest (less this harness's INFO/CONFIG).
        let merges = get("calls_fcall");
        let inner = self.inner_per_script * merges;
        run.merges_per_event = merges / n;
        run.script_inner_per_event = inner / n;
        run.commands_per_event = (all_calls(&counters) - inner) / n;
        run.redis_us_per_merge = get("usec_fcall") / merges.max(1.0);
        run.redis_us_per_event_fcall = get("usec_fcall") / n;
        run.redis_us_per_event_scripts = (get("usec_evalsha") + get("usec_eval")) / n;
        run.feed = feed.map(|(mut feed, appended_at)| {
            feed.tail_ms = appended_at - last_ack;
            if !feed.complete(run.written) {
                run.note = format!(
                    "{} INVALID: {} changes published, {} appended, for {} entries written",
                    run.note, feed.published, feed.appended, run.written
                );
            }
            feed
        });
        run
    }
}
