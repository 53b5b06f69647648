//! Regions: named key spaces that receive window results.
//!
//! [`Region`] is the seam between a task and its sink. [`RedisRegion`] is
//! the production one (Redis Cluster, merge script, epoch fencing);
//! [`MemoryRegion`] applies the same merge rules in process for the embedded
//! quick-start. A task turns its [`WindowResult`]s into [`EntryWrite`]s with a
//! [`RegionLayout`] and hands them over in batches.

mod connection;
mod entry;
pub mod function;
mod memory;
mod redis;
mod slots;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use self::redis::RedisRegion;
pub use connection::SharedConnection;
pub use entry::{partial_field, KeyTemplate};
pub use memory::MemoryRegion;
pub use slots::key_slot;

use crate::config::{AggregateFunction, PipelineConfig, TtlFrom};
use crate::time::Millis;
use crate::window::{Accumulator, ResultKind, Window, WindowResult};

/// How a write changes its source partition's partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Replace,
    /// Merge into the stored partial (one amended late record).
    Merge,
    /// Remove the partial (a session merged away).
    Delete,
}

impl WriteMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            WriteMode::Replace => "r",
            WriteMode::Merge => "m",
            WriteMode::Delete => "d",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// Milliseconds after the write.
    After(u64),
    /// At this epoch-millisecond instant.
    At(Millis),
}

/// One write of one source partition's partial into one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryWrite {
    /// The full Redis key, `<prefix>:<region>:<entry key>`.
    pub key: String,
    /// `_p:<topic>:<partition>`.
    pub field: Arc<str>,
    pub epoch: u64,
    /// The source position the write was produced at; older positions
    /// never overwrite newer ones.
    pub offset: i64,
    pub mode: WriteMode,
    /// `{"a":[...],"e":..,"o":..}` (see `partial_json`).
    pub partial: String,
    pub window: Window,
    pub expiry: Expiry,
}

impl EntryWrite {
    /// The variable-size arguments the write sends: key, partial field and
    /// partial value (the fixed-size numbers and the protocol's framing
    /// are left out). What `regionflow_bytes_out_total` counts.
    pub fn payload_bytes(&self) -> usize {
        self.key.len() + self.field.len() + self.partial.len()
    }
}

/// What the region did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub applied: u64,
    /// Refused: a newer epoch owns the source partition.
    pub fenced: u64,
    /// Skipped: the entry already holds a later state of this source.
    pub stale: u64,
    /// Commands that failed transiently and were retried.
    pub retried: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot reach Redis Cluster at {nodes}: {message}; check redis.nodes and that the cluster is up")]
    Unreachable { nodes: String, message: String },
    #[error("Redis write failed after retrying for {elapsed:?}: {message}")]
    WriteFailed { elapsed: Duration, message: String },
    #[error("Redis returned an unexpected reply: {0}")]
    Protocol(String),
}

pub trait Region: Send + Sync {
    /// Applies a batch of writes; resolves once every write is acknowledged.
    /// Writes to the same entry are adjacent and must be applied in order;
    /// different entries may be written concurrently.
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>>;

    /// Changes when the region's connection was replaced, which a
    /// checkpoint that waits for replicas must know (see `SharedConnection`).
    fn connection_generation(&self) -> u64 {
        0
    }
}

/// Turns window results into entry writes for one pipeline's region.
#[derive(Debug, Clone)]
pub struct RegionLayout {
    prefix: String,
    template: KeyTemplate,
    ttl: Option<Duration>,
    ttl_from: TtlFrom,
    pub functions: Vec<AggregateFunction>,
    /// `function:name,...` for the merge script.
    pub spec: Arc<str>,
}

impl RegionLayout {
    pub fn new(key_prefix: &str, config: &PipelineConfig) -> Self {
        let spec = config
            .aggregates
            .iter()
            .map(|(name, a)| format!("{}:{name}", function_name(a.function)))
            .collect::<Vec<_>>()
            .join(",");
        RegionLayout {
            prefix: format!("{key_prefix}:{}:", config.region.name),
            template: KeyTemplate::parse(&config.region.key).expect("validated at configuration load"),
            ttl: config.region.ttl,
            ttl_from: config.region.ttl_from,
            functions: config.aggregates.values().map(|a| a.function).collect(),
            spec: spec.into(),
        }
    }

    pub fn entry_key(&self, key: &str, window: Window) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key.len() + 32);
        out.push_str(&self.prefix);
        self.template.render_into(&mut out, key, window.start, window.end);
        out
    }

    pub fn write(&self, result: &WindowResult, field: &Arc<str>, epoch: u64, offset: i64) -> EntryWrite {
        let mode = match result.kind {
            ResultKind::Final | ResultKind::Update => WriteMode::Replace,
            ResultKind::Amend => WriteMode::Merge,
            ResultKind::Retract => WriteMode::Delete,
        };
        let partial = partial_json(&result.accumulators, epoch, offset);
        let expiry = match (self.ttl, self.ttl_from) {
            (None, _) => Expiry::Never,
            (Some(ttl), TtlFrom::Write) => Expiry::After(ttl.as_millis() as u64),
            (Some(ttl), TtlFrom::WindowEnd) => Expiry::At(result.window.end.saturating_add(ttl.as_millis() as Millis)),
        };
        EntryWrite {
            key: self.entry_key(&result.key, result.window),
            field: field.clone(),
            epoch,
            offset,
            mode,
            partial,
            window: result.window,
            expiry,
        }
    }
}

/// The partial JSON `merge.lua` reads, `{"a":[..],"e":<epoch>,"o":<offset>}`:
/// the bytes `serde_json::json!({"e": epoch, "o": offset, "a": partials})`
/// writes (its maps sort their keys), built straight into the string.
fn partial_json(accumulators: &[Accumulator], epoch: u64, offset: i64) -> String {
    let mut out = Vec::with_capacity(48 + 24 * accumulators.len());
    out.extend_from_slice(b"{\"a\":[");
    for (i, accumulator) in accumulators.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        accumulator.write_partial(&mut out);
    }
    write!(out, "],\"e\":{epoch},\"o\":{offset}}}").expect("writing into memory cannot fail");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

pub fn function_name(function: AggregateFunction) -> &'static str {
    match function {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::Avg => "avg",
        AggregateFunction::DistinctCount => "distinct_count",
        AggregateFunction::First => "first",
        AggregateFunction::Last => "last",
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::window::hll::HyperLogLog;

    fn number(rng: &mut StdRng) -> f64 {
        match rng.random_range(0..10) {
            0 => [0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN_POSITIVE, 1e21, 1e-7]
                [rng.random_range(0..9)],
            1 => rng.random_range(-1e6..1e6_f64).round(),
            2 => f64::from_bits(rng.random()),
            _ => rng.random_range(-1e6..1e6_f64) / 100.0,
        }
    }

    fn text(rng: &mut StdRng) -> Box<str> {
        const PIECES: &[&str] = &["a", "/page/17", "\"", "\\", "\n", "\u{1}", "é", "😀", " ", "\u{7f}"];
        (0..rng.random_range(0..6)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect::<String>().into()
    }

    fn accumulator(rng: &mut StdRng) -> Accumulator {
        let pair =
            |rng: &mut StdRng| rng.random_bool(0.8).then(|| (rng.random_range(-1i64 << 50..1i64 << 50), text(rng)));
        let optional = |rng: &mut StdRng| rng.random_bool(0.8).then(|| number(rng));
        match rng.random_range(0..8) {
            0 => Accumulator::Count(if rng.random_bool(0.1) { u64::MAX } else { rng.random_range(0..1_000_000) }),
            1 => Accumulator::Sum(number(rng)),
            2 => Accumulator::Min(optional(rng)),
            3 => Accumulator::Max(optional(rng)),
            4 => Accumulator::Avg { sum: number(rng), count: rng.random() },
            5 => {
                let mut h = HyperLogLog::default();
                for _ in 0..rng.random_range(0..20) {
                    h.insert_hash(rng.random());
                }
                Accumulator::DistinctCount(h)
            }
            6 => Accumulator::First(pair(rng)),
            _ => Accumulator::Last(pair(rng)),
        }
    }

    #[test]
    fn partial_json_is_byte_identical_to_serde_json() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let accumulators: Vec<Accumulator> = (0..rng.random_range(0..5)).map(|_| accumulator(&mut rng)).collect();
            let (epoch, offset) =
                (rng.random::<u64>() >> rng.random_range(0..64), rng.random::<i64>() >> rng.random_range(0..64));
            let partials: Vec<_> = accumulators.iter().map(|a| a.to_partial()).collect();
            let expected = serde_json::json!({"e": epoch, "o": offset, "a": partials}).to_string();
            assert_eq!(partial_json(&accumulators, epoch, offset), expected, "{accumulators:?}");
        }
    }
}
