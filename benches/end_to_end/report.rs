//! The report printed at the end: throughput next to each ceiling, cost
//! per event, state at scale and latency.

use crate::compute_ceiling::Compute;
use crate::connector::Run;
use crate::feed::{Feed, FeedCost, FeedRound};
use crate::latency::Latency;
use crate::options::Options;
use crate::sink_ceiling::Sink;
use crate::source_ceiling::Rate;
use crate::state::StateSize;
use crate::support::DISORDER_MS;

// Report.

pub struct Row {
    pub label: String,
    pub events: usize,
    pub keys: u32,
    pub source: Rate,
    pub compute: Compute,
    pub sink: Sink,
    pub entries: usize,
    pub run: Run,
    pub state: StateSize,
}

pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "-".into()
    }
}

pub fn print_rows(rows: &[Row]) {
    println!();
    println!("== Throughput (events/s unless noted; ratio = end-to-end / ceiling) ==");
    println!(
        "{:<14} {:>7} {:>9} {:>8} | {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>9} {:>9} {:>9} {:>5}",
        "workload",
        "events",
        "e2e ev/s",
        "e2e MB/s",
        "source",
        "ratio",
        "operator",
        "dec+op",
        "ratio",
        "entries",
        "e2e ent/s",
        "merge FCALL/s",
        "HSET/s",
        "ratio"
    );
    for r in rows {
        println!(
            "{:<14} {:>7} {:>9} {:>8.1} | {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>9} {:>9} {:>9} {:>5}",
            r.label,
            si(r.events as f64),
            si(r.run.events_per_s),
            r.run.bytes_per_s / 1e6,
            si(r.source.events_per_s),
            pct(r.run.events_per_s, r.source.events_per_s),
            si(r.compute.operator_events_per_s),
            si(r.compute.decode_operator_events_per_s),
            pct(r.run.events_per_s, r.compute.operator_events_per_s),
            si(r.entries as f64),
            si(r.run.entries_per_s),
            si(r.sink.merge_per_s),
            si(r.sink.hset_per_s),
            pct(r.run.entries_per_s, r.sink.merge_per_s),
        );
    }
    println!();
    println!("== Cost per event ==");
    println!(
        "{:<14} {:>8} {:>10} {:>9} {:>9} {:>10} {:>11} {:>12} {:>10}  note",
        "workload", "run s", "cmds/ev", "FCALL", "in-function", "peak RSS", "state B/wk", "open w-keys", "CPU us/ev"
    );
    for r in rows {
        println!(
            "{:<14} {:>8.1} {:>10.3} {:>9.3} {:>9.2} {:>8.0}MB {:>11.0} {:>12} {:>5.2} (+{:.2})  {}",
            r.label,
            r.run.seconds,
            r.run.commands_per_event,
            r.run.merges_per_event,
            r.run.script_inner_per_event,
            r.run.peak_rss as f64 / 1048576.0,
            r.state.bytes_per_window_key,
            r.state.open_window_keys,
            r.run.cpu_us_per_event,
            r.run.harness_cpu_us_per_event,
            r.run.note
        );
    }
}

/// The throughput rows for scripts, one line each: `LABEL keys=.. events=..
/// operator_events_per_s=.. decode_operator_events_per_s=..
/// e2e_events_per_s=..` (the label's spaces as `_`). `scripts/flink-peer.sh`
/// sets the W1 rows' ceilings beside Flink's rate with as many keys.
pub fn write_summary(path: &str, rows: &[Row]) {
    let lines: String = rows
        .iter()
        .map(|r| {
            format!(
                "{} keys={} events={} operator_events_per_s={:.0} decode_operator_events_per_s={:.0} \
                 e2e_events_per_s={:.0}\n",
                r.label.replace(' ', "_"),
                r.keys,
                r.events,
                r.compute.operator_events_per_s,
                r.compute.decode_operator_events_per_s,
                r.run.events_per_s
            )
        })
        .collect();
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(path, lines) {
        Ok(()) => println!("summary: {}", path.display()),
        Err(e) => eprintln!("could not write the summary to {}: {e}", path.display()),
    }
}

/// One figure of a run, for a ratio.
type RunFigure = fn(&Run) -> f64;

/// The change feed's cost: each round's two runs, then feed on / off.
pub fn print_feed(cost: &FeedCost) {
    println!();
    println!(
        "== Change feed: W1 with region.changes = {{ topic = \"{}\", mode = \"every\" }} against W1 without, \
         same data set ==",
        cost.topic
    );
    println!(
        "{:<5} {:<4} {:>8} {:>9} {:>6} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>7}  note",
        "round",
        "feed",
        "e2e ev/s",
        "e2e ent/s",
        "run s",
        "CPU us/ev",
        "Kafka thr",
        "harness",
        "Redis us/F",
        "peak RSS",
        "published",
        "appended",
        "tail ms"
    );
    for (i, round) in cost.rounds.iter().enumerate() {
        for (name, r) in [("off", &round.plain), ("on", &round.feed)] {
            let feed = |f: fn(&Feed) -> String| r.feed.as_ref().map_or("-".into(), f);
            println!(
                "{:<5} {:<4} {:>8} {:>9} {:>6.1} {:>9.2} {:>9.2} {:>9.2} {:>10.1} {:>6.0}MB {:>9} {:>9} {:>7}  {}",
                i + 1,
                name,
                si(r.events_per_s),
                si(r.entries_per_s),
                r.seconds,
                r.cpu_us_per_event,
                r.kafka_threads_cpu_us_per_event,
                r.harness_cpu_us_per_event,
                r.redis_us_per_merge,
                r.peak_rss as f64 / 1048576.0,
                feed(|f| f.published.to_string()),
                feed(|f| f.appended.to_string()),
                feed(|f| f.tail_ms.to_string()),
                r.note
            );
        }
    }
    println!(
        "(CPU us/ev: the connector's, of which its Kafka client threads' in `Kafka thr`; harness: this process, \
         mostly the mock brokers; Redis us/F: Redis's own time per FCALL during the run)"
    );
    println!(
        "merge function alone (sink ceiling, nothing else running): {:.1} us of Redis time per run, {}/s; capturing \
         the change {:.1} us, {}/s: {:.2}x the time",
        cost.sink_plain_us,
        si(cost.sink_plain_per_s),
        cost.sink_changes_us,
        si(cost.sink_changes_per_s),
        cost.sink_changes_us / cost.sink_plain_us
    );
    let valid: Vec<&FeedRound> = cost.rounds.iter().filter(|r| r.valid()).collect();
    if valid.len() < cost.rounds.len() {
        println!(
            "{} of {} rounds INVALID (a change not published, or a run incomplete): left out",
            cost.rounds.len() - valid.len(),
            cost.rounds.len()
        );
    }
    if valid.is_empty() {
        return;
    }
    // Feed on / off per valid round, and their median.
    let figures: [(&str, RunFigure); 6] = [
        ("events/s", |r| r.events_per_s),
        ("entries/s", |r| r.entries_per_s),
        ("connector CPU us/event", |r| r.cpu_us_per_event),
        ("connector CPU us/event outside its Kafka threads", |r| r.cpu_us_per_event - r.kafka_threads_cpu_us_per_event),
        ("harness (mock brokers) CPU us/event", |r| r.harness_cpu_us_per_event),
        ("Redis us/FCALL in the run", |r| r.redis_us_per_merge),
    ];
    println!("feed on / off{}:", if valid.len() > 1 { " (per round; median)" } else { "" });
    for (name, figure) in figures {
        let mut each: Vec<f64> = valid.iter().map(|r| figure(&r.feed) / figure(&r.plain)).collect();
        let listed = each.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        each.sort_by(f64::total_cmp);
        let mid = each.len() / 2;
        let median = if each.len().is_multiple_of(2) { (each[mid - 1] + each[mid]) / 2.0 } else { each[mid] };
        if valid.len() > 1 {
            println!("  {name}: {listed}; median {median:.2}");
        } else {
            println!("  {name}: {median:.2}");
        }
    }
}

/// W1's operator alone with many open window-keys (`state::state_stress`):
/// (events/s, bytes per window-key, open window-keys).
pub fn print_state_at_scale((rate, bytes, open): (f64, f64, usize)) {
    println!();
    println!(
        "== State at scale: W1 operator with {} open window-keys: {:.0} B/window-key, {}/s ==",
        si(open as f64),
        bytes,
        si(rate)
    );
}

pub fn print_latency(l: &Latency, opts: &Options) {
    let ms = |k: &str| l.direct.get(k).and_then(|v| v.parse::<f64>().ok());
    let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
    let beyond = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0} ms", v - DISORDER_MS as f64));
    println!();
    println!(
        "== Latency: W1 live at {}/s ({}) for {} s, emit = {}, flush_interval = {}, {} events, {} writes applied ==",
        si(l.rate),
        if opts.latency_rate.is_some() { "BENCH_LATENCY_RATE" } else { "half the W1 end-to-end rate" },
        l.seconds,
        opts.latency_emit.as_deref().unwrap_or(r#"{ mode = "final" }"#),
        opts.latency_flush.as_deref().unwrap_or("default"),
        l.produced,
        l.entries
    );
    println!(
"window end → the entry's last write acknowledged (0 when before the end): p50 {}, p90 {}, p99 {}, max {} ({} entries)",
        fmt(ms("latency_p50_ms")),
        fmt(ms("latency_p90_ms")),
        fmt(ms("latency_p99_ms")),
        fmt(ms("latency_max_ms")),
        l.direct.get("latency_count").cloned().unwrap_or_default()
    );
    println!(
        "beyond the window's own wait ({DISORDER_MS} ms out-of-orderness): p50 {}, p99 {}",
        beyond(ms("latency_p50_ms")),
        beyond(ms("latency_p99_ms"))
    );
    println!(
        "connector histogram regionflow_event_to_region_latency_seconds (bucketed): p50 {}, p99 {} {}",
        fmt(l.histogram_p50.map(|s| s * 1000.0)),
        fmt(l.histogram_p99.map(|s| s * 1000.0)),
        l.note
    );
}
