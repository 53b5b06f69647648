//! Regions: named key spaces that receive window results.
//!
//! [`Region`] is the seam between a task and its sink. [`RedisRegion`] is
//! the production one (Redis Cluster, merge script, epoch fencing);
//! [`MemoryRegion`] applies the same merge rules in process for the embedded
//! quick-start. A task turns its [`WindowResult`]s into [`EntryWrite`]s with a
//! [`RegionLayout`] and hands them over in batches.

mod connection;
mod entry;
mod memory;
mod redis;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use self::redis::{RedisRegion, MERGE_SCRIPT};
pub use connection::SharedConnection;
pub use entry::{partial_field, KeyTemplate};
pub use memory::MemoryRegion;

use crate::config::{AggregateFunction, PipelineConfig, TtlFrom};
use crate::time::Millis;
use crate::window::{ResultKind, Window, WindowResult};

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
    /// `{"e":..,"o":..,"a":[...]}`.
    pub partial: String,
    pub window: Window,
    pub expiry: Expiry,
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
        let partials: Vec<_> = result.accumulators.iter().map(|a| a.to_partial()).collect();
        let partial = serde_json::json!({"e": epoch, "o": offset, "a": partials}).to_string();
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
