//! Regions: named key spaces that receive window results.
//!
//! [`Region`] is the seam between a task and where its results go (the
//! result sink). The production region is `redis::RedisRegion` (Redis
//! Cluster, merge function, epoch fencing); [`MemoryRegion`] applies the
//! same merge rules in process for the embedded quick-start. A task turns
//! its [`WindowResult`]s into [`EntryWrite`]s with a [`RegionLayout`] and
//! hands them over in batches.
//!
//! The folder is named after the project's word for a result sink (a region,
//! as in Apache Geode); everything Redis-specific lives in `redis/`.

pub mod change;
mod entry;
mod memory;
pub mod read;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use change::{Change, ChangeFormat, ChangeMode, ChangeOp, JsonChanges};
pub use entry::{partial_field, KeyTemplate};
pub use memory::{Fields, MemoryRegion};

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

/// What a write records of the change it makes (the change feed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Capture {
    /// Nothing: the region has no change feed.
    #[default]
    None,
    /// Raise the entry's version, publish nothing (an update under the
    /// feed's `final` mode).
    Version,
    /// Raise the version and return the change to publish.
    Publish,
}

impl Capture {
    pub fn as_arg(self) -> &'static str {
        match self {
            Capture::None => "",
            Capture::Version => "v",
            Capture::Publish => "c",
        }
    }
}

/// One write of one source partition's partial into one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryWrite {
    /// The full Redis key, `<prefix>:<region>:<entry key>`.
    pub key: String,
    /// The group key the entry aggregates.
    pub group: Arc<str>,
    /// `_p:<topic>:<partition>`.
    pub field: Arc<str>,
    pub epoch: u64,
    /// The source position the write was produced at; older positions
    /// never overwrite newer ones.
    pub offset: i64,
    pub mode: WriteMode,
    /// The partition's accumulators for the entry, one per aggregate.
    pub accumulators: Vec<Accumulator>,
    pub window: Window,
    pub expiry: Expiry,
    pub capture: Capture,
    /// For a merge: the replication ids of the primaries whose data it may
    /// build on (the writer's, as of its last checkpoint); a node with
    /// another replication history refuses it ([`WriteOutcome::unverified`]).
    pub vouched: Option<Arc<str>>,
}

impl EntryWrite {
    /// The change this write made: the entry at `version`, with `fields`
    /// (none for a deletion).
    pub fn change(&self, version: u64, op: ChangeOp, fields: Vec<(String, String)>) -> Change {
        Change {
            entry: self.key.clone(),
            key: self.group.clone(),
            window_start: self.window.start,
            window_end: self.window.end,
            version,
            op,
            fields,
        }
    }
}

/// What the region did with a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteOutcome {
    pub applied: u64,
    /// Refused: a newer epoch owns the source partition.
    pub fenced: u64,
    /// Skipped: the entry already holds a later state of this source.
    pub stale: u64,
    /// Refused merges: the node's replication history is not one the
    /// writer vouched for (a failover since its last checkpoint may have
    /// lost what the merge would build on).
    pub unverified: u64,
    /// Commands that failed transiently and were retried.
    pub retried: u64,
    /// The variable-size payload sent: keys, partial fields and encoded
    /// partials. What `regionflow_bytes_out_total` counts.
    pub bytes: u64,
    /// The changes to publish (writes under [`Capture::Publish`] that
    /// changed their entry, and stale replays of such writes, which publish
    /// the entry as it stands so that a publication lost with a previous
    /// owner is made again), in write order.
    pub changes: Vec<Change>,
}

/// Why a region could not apply a batch; the task stops with it.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region write failed after retrying for {elapsed:?}: {message}")]
    WriteFailed { elapsed: Duration, message: String },
    #[error("the region refused a write: {0}")]
    Refused(String),
}

pub trait Region: Send + Sync {
    /// Applies a batch of writes; resolves once every write is acknowledged.
    /// Writes to the same entry are adjacent and must be applied in order;
    /// different entries may be written concurrently.
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>>;
}

/// Turns window results into entry writes for one pipeline's region.
#[derive(Debug, Clone)]
pub struct RegionLayout {
    prefix: String,
    template: KeyTemplate,
    ttl: Option<Duration>,
    ttl_from: TtlFrom,
    changes: Option<ChangeMode>,
}

impl RegionLayout {
    /// Entries at `<key_prefix>:<region>:<template rendered>`.
    pub fn new(
        key_prefix: &str,
        region: &str,
        template: KeyTemplate,
        ttl: Option<Duration>,
        ttl_from: TtlFrom,
    ) -> Self {
        RegionLayout { prefix: format!("{key_prefix}:{region}:"), template, ttl, ttl_from, changes: None }
    }

    /// With a change feed publishing these changes.
    pub fn with_changes(mut self, mode: Option<ChangeMode>) -> Self {
        self.changes = mode;
        self
    }

    /// What a write of this kind of result captures.
    fn capture(&self, kind: ResultKind) -> Capture {
        match (self.changes, kind) {
            (None, _) => Capture::None,
            (Some(ChangeMode::Final), ResultKind::Update) => Capture::Version,
            (Some(_), _) => Capture::Publish,
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
        let expiry = match (self.ttl, self.ttl_from) {
            (None, _) => Expiry::Never,
            (Some(ttl), TtlFrom::Write) => Expiry::After(ttl.as_millis() as u64),
            (Some(ttl), TtlFrom::WindowEnd) => Expiry::At(result.window.end.saturating_add(ttl.as_millis() as Millis)),
        };
        EntryWrite {
            key: self.entry_key(&result.key, result.window),
            group: result.key.clone(),
            field: field.clone(),
            epoch,
            offset,
            mode,
            accumulators: result.accumulators.clone(),
            window: result.window,
            expiry,
            capture: self.capture(result.kind),
            vouched: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlFrom {
    /// TTL counts from each write.
    #[default]
    Write,
    /// TTL counts from the window's end, in event time.
    WindowEnd,
}
