//! A reader that samples a region over and over while a chaos run goes on,
//! as a client polling `HGETALL` would, and checks that what it sees never
//! goes backwards.
//!
//! What must hold, and why. An entry's public `orders` count is the sum of
//! its partials' counts (one partial `_p:<topic>:<partition>` per source
//! partition, `{"e":epoch,"o":offset,"a":[count,...]}`). The merge script
//! refuses a partial from an older epoch and skips one produced at an older
//! source offset, so a stored partial's epoch and offset never decrease;
//! and a task's result at a later offset holds every record of that window
//! (or session) its partition had up to there (a final value, an amendment
//! adding late records, or a running update), so the partial's count never
//! decreases either. Between two samples of one entry, therefore:
//!
//! - fixed windows (tumbling, sliding): the entry never disappears, its
//!   `orders` never decreases, and no partial disappears or sees its epoch,
//!   offset or count decrease;
//! - sessions: the same while the entry stays present. A session entry is
//!   deleted when its session is merged into another (a retraction), and
//!   the README allows one step back: a replay from a checkpoint taken
//!   before that merge writes the earlier session's entry again until it
//!   reaches the merging record. So once a session entry disappears, the
//!   reader forgets it, and a reappearance starts afresh.
//!
//! One more exception: a Redis fault that loses acknowledged writes (a
//! primary killed before replicating, a forced failover) can take values
//! back until the partitions' replays from their checkpoints (which `WAIT`
//! vouched for) rewrite them. The test brackets such faults with
//! [`RegionWatch::lossy_fault_begins`] / [`RegionWatch::lossy_fault_ends`]:
//! samples taken across one are discarded and the reader's memory is reset
//! after it; from then on values only grow again.
//!
//! Independently of order, every count ever seen is reported
//! ([`Report::max_count`]) so the test can check that no sample, not even
//! one discarded above, showed more records than the reference holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Entry key → its fields (`HGETALL`).
pub type Snapshot = BTreeMap<String, BTreeMap<String, String>>;

/// Reads every entry matching `pattern` from the serving primaries among
/// `ports` (SCAN, then pipelined HGETALL). `Err` when the three primaries
/// cannot all be read (a node down, a failover in progress).
pub fn snapshot(ports: &[u16], pattern: &str) -> Result<Snapshot, String> {
    let mut out = Snapshot::new();
    let mut primaries = 0;
    for &port in ports {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { continue };
        // A dead node refuses at once: not part of the cluster now.
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else { continue };
        let mut read = || -> redis::RedisResult<Option<Snapshot>> {
            con.set_read_timeout(Some(Duration::from_secs(5)))?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con)?;
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                return Ok(None);
            }
            let mut keys = std::collections::BTreeSet::new();
            super::redis_cluster::scan_into(&mut con, pattern, &mut keys)?;
            let keys: Vec<String> = keys.into_iter().collect();
            let mut entries = Snapshot::new();
            for chunk in keys.chunks(200) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("HGETALL").arg(key);
                }
                let values: Vec<BTreeMap<String, String>> = pipe.query(&mut con)?;
                for (key, fields) in chunk.iter().zip(values) {
                    // Deleted between SCAN and HGETALL: absent, as a reader
                    // sees it; so is a deleted entry's tombstone (its
                    // version only, under a change feed).
                    if fields.contains_key("window_start") {
                        entries.insert(key.clone(), fields);
                    }
                }
            }
            Ok(Some(entries))
        };
        match read() {
            Ok(Some(entries)) => {
                primaries += 1;
                out.extend(entries);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("node {port}: {e}")),
        }
    }
    if primaries != 3 {
        return Err(format!("{primaries} primaries answered, not 3"));
    }
    Ok(out)
}

/// What the reader checks of one entry.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    orders: u64,
    /// Partial field → (epoch, offset, count).
    partials: BTreeMap<String, (i64, i64, u64)>,
}

/// Where `orders` (the count) sits in a partial's "a" array: partials list
/// the aggregates in name order (the configuration's map sorts them).
fn count_index() -> usize {
    let mut names: Vec<&str> =
        super::reference::AGGREGATES.lines().filter_map(|l| l.split_once(" = ")).map(|(n, _)| n.trim()).collect();
    names.sort_unstable();
    names.iter().position(|n| *n == "orders").expect("the reference aggregates count `orders`")
}

fn seen(fields: &BTreeMap<String, String>) -> Result<Seen, String> {
    let count = count_index();
    let orders = fields.get("orders").and_then(|o| o.parse().ok()).ok_or("no numeric `orders` field")?;
    let mut partials = BTreeMap::new();
    for (field, value) in fields.iter().filter(|(f, _)| f.starts_with("_p:")) {
        let v: serde_json::Value = serde_json::from_str(value).map_err(|e| format!("{field}: {e}"))?;
        let parsed = (|| Some((v["e"].as_i64()?, v["o"].as_i64()?, v["a"][count].as_u64()?)))();
        partials.insert(field.clone(), parsed.ok_or_else(|| format!("{field}: no e/o/count in {value:.300}"))?);
    }
    Ok(Seen { orders, partials })
}

/// What `before` → `now` breaks, if anything.
fn went_back(before: &Seen, now: &Seen) -> Option<String> {
    if now.orders < before.orders {
        return Some(format!("orders went from {} to {}", before.orders, now.orders));
    }
    for (field, &(e, o, c)) in &before.partials {
        match now.partials.get(field) {
            None => return Some(format!("partial {field} disappeared (was e={e} o={o} count={c})")),
            Some(&(e2, o2, c2)) if e2 < e || o2 < o || c2 < c => {
                return Some(format!("partial {field} went from e={e} o={o} count={c} to e={e2} o={o2} count={c2}"))
            }
            Some(_) => {}
        }
    }
    None
}

#[derive(Debug, Default)]
pub struct Report {
    pub samples: usize,
    /// Samples not checked: incomplete, or taken across a lossy fault.
    pub discarded: usize,
    pub violations: Vec<String>,
    /// The largest `orders` seen per entry, in any sample.
    pub max_count: BTreeMap<String, u64>,
}

pub struct RegionWatch {
    stop: Arc<AtomicBool>,
    /// Odd while a lossy fault is in progress; bumped at its start and end.
    phase: Arc<AtomicU64>,
    report: Arc<Mutex<Report>>,
    handle: Option<JoinHandle<()>>,
}

impl RegionWatch {
    /// Samples the entries matching `pattern` every 200 ms until
    /// [`RegionWatch::finish`]; `sessions` selects the session rules.
    pub fn start(ports: Vec<u16>, pattern: String, sessions: bool) -> RegionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(Report::default()));
        let (stop2, phase2, report2) = (stop.clone(), phase.clone(), report.clone());
        let handle = std::thread::spawn(move || {
            let mut history: BTreeMap<String, Seen> = BTreeMap::new();
            let mut last_phase = 0;
            while !stop2.load(Ordering::SeqCst) {
                let before = phase2.load(Ordering::SeqCst);
                let sample = snapshot(&ports, &pattern);
                let after = phase2.load(Ordering::SeqCst);
                let mut report = report2.lock().expect("report lock");
                report.samples += 1;
                if let Ok(entries) = &sample {
                    for (key, fields) in entries {
                        if let Some(n) = fields.get("orders").and_then(|o| o.parse::<u64>().ok()) {
                            let max = report.max_count.entry(key.clone()).or_default();
                            *max = (*max).max(n);
                        }
                    }
                }
                let entries = match sample {
                    Ok(entries) if before == after && before % 2 == 0 => entries,
                    _ => {
                        report.discarded += 1;
                        drop(report);
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                if before != last_phase {
                    history.clear();
                    last_phase = before;
                }
                let n = report.samples;
                let mut problems = Vec::new();
                if sessions {
                    history.retain(|key, _| entries.contains_key(key));
                } else {
                    for key in history.keys().filter(|k| !entries.contains_key(*k)) {
                        problems.push(format!("sample {n}: {key} disappeared"));
                    }
                }
                for (key, fields) in &entries {
                    match seen(fields) {
                        Err(e) => problems.push(format!("sample {n}: {key}: {e}")),
                        Ok(now) => {
                            if let Some(p) = history.get(key).and_then(|before| went_back(before, &now)) {
                                problems.push(format!("sample {n}: {key}: {p}"));
                            }
                            history.insert(key.clone(), now);
                        }
                    }
                }
                let room = 50usize.saturating_sub(report.violations.len());
                report.violations.extend(problems.into_iter().take(room));
                drop(report);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        RegionWatch { stop, phase, report, handle: Some(handle) }
    }

    pub fn lossy_fault_begins(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    pub fn lossy_fault_ends(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops sampling and returns what the reader saw.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("region reader thread");
        }
        std::mem::take(&mut *self.report.lock().expect("report lock"))
    }
}

impl Drop for RegionWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
