//! One pipeline's configuration: where records come from, how they are keyed,
//! timed and windowed, what is aggregated, and which region receives results.
//!
//! Every type here is the validated, typed form; `validate` is the single
//! place that refuses impossible combinations, so the rest of the code never
//! re-checks a setting.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
pub use crate::format::{EventTimeSource, Format, KeySource, TimeFormat};
pub use crate::region::{ChangeMode, TtlFrom};
pub use crate::window::{AggregateFunction, LateAction};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Source topics; every partition of every topic becomes one task.
    #[serde(deserialize_with = "super::list_or_comma_separated")]
    pub topics: Vec<String>,
    /// Record format.
    #[serde(default)]
    pub format: Format,
    /// The grouping key of the aggregation.
    pub key: KeySource,
    /// Where a record's event time comes from.
    pub event_time: EventTimeSource,
    pub window: WindowConfig,
    #[serde(default)]
    pub watermark: WatermarkConfig,
    /// How long a fired window keeps accepting late records (which re-fire it).
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// What happens to a record that arrives after its windows are purged.
    #[serde(default)]
    pub late_records: LateAction,
    /// Aggregates by output field name (the region entry's hash field).
    pub aggregates: BTreeMap<String, AggregateConfig>,
    #[serde(default)]
    pub emit: EmitConfig,
    pub region: RegionConfig,
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Records bigger than this (key + payload) go to the dead-letter topic.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    1024 * 1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    Tumbling {
        #[serde(with = "humantime_serde")]
        size: Duration,
    },
    Sliding {
        #[serde(with = "humantime_serde")]
        size: Duration,
        #[serde(with = "humantime_serde")]
        slide: Duration,
    },
    Session {
        #[serde(with = "humantime_serde")]
        gap: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Bounded out-of-orderness: the watermark trails the highest event
    /// time seen by this much.
    #[serde(default = "default_out_of_orderness", with = "humantime_serde")]
    pub max_out_of_orderness: Duration,
    /// After this long without records, a partition's watermark advances
    /// with the wall clock so its windows still close.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Records whose event time is further ahead of the wall clock than
    /// this go to the dead-letter topic (stage `event_time`) instead of
    /// moving the watermark (and making every later record late).
    #[serde(default = "default_max_ahead_of_clock", with = "humantime_serde")]
    pub max_ahead_of_clock: Duration,
    /// Records whose event time is further behind the wall clock than this
    /// go to the dead-letter topic; absent means no bound.
    #[serde(default, with = "humantime_serde")]
    pub max_behind_clock: Option<Duration>,
}

fn default_out_of_orderness() -> Duration {
    Duration::from_secs(1)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_ahead_of_clock() -> Duration {
    Duration::from_secs(3600)
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_orderness: default_out_of_orderness(),
            idle_timeout: default_idle_timeout(),
            max_ahead_of_clock: default_max_ahead_of_clock(),
            max_behind_clock: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub function: AggregateFunction,
    /// JSON pointer of the input field; required by every function but `count`.
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum EmitConfig {
    /// One result per window, when the watermark passes its end (plus
    /// re-fires for late records within the allowed lateness).
    #[default]
    Final,
    /// Also write the running result of open windows at this interval;
    /// when a window closes, only its keys changed since their last update
    /// are written again (the region holds the others' final values).
    Updates {
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name: entries live at `<redis.key_prefix>:<name>:<entry key>`.
    pub name: String,
    /// Entry-key template over `{key}`, `{window_start}` and `{window_end}`
    /// (epoch milliseconds).
    #[serde(default = "default_key_template")]
    pub key: String,
    /// Expire entries this long after `ttl_from`; absent means never.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub ttl_from: TtlFrom,
    /// Replicas of every primary that must hold a task's writes (by their
    /// acknowledged replication offsets) before its checkpoint is stored
    /// and the committed offset moves to it, and, for session windows,
    /// before new session entries are written; 0 trusts asynchronous
    /// replication.
    #[serde(default)]
    pub redundancy: usize,
    /// The change feed: every change of an entry, published to a Kafka
    /// topic. Absent means none.
    #[serde(default)]
    pub changes: Option<ChangesConfig>,
}

/// `region.changes = { topic = "...", mode = "every" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// The topic the changes go to, keyed by entry (compaction keeps each
    /// entry's latest state; deletions are tombstones).
    pub topic: String,
    #[serde(default)]
    pub mode: ChangeMode,
}

fn default_key_template() -> String {
    "{key}:{window_start}".to_string()
}

/// Named after Kafka Connect's `errors.tolerance` and
/// `errors.deadletterqueue.topic.name`, which users already know.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    #[serde(default)]
    pub tolerance: Tolerance,
    /// Dead-letter topic; without one, tolerated bad records are only counted.
    #[serde(default)]
    pub deadletterqueue_topic_name: Option<String>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        ErrorsConfig { tolerance: Tolerance::All, deadletterqueue_topic_name: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// Bad records go to the dead-letter topic and the pipeline goes on.
    #[default]
    All,
    /// The first bad record stops the connector with its position.
    None,
}

impl PipelineConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { key: format!("{path}.{key}"), message };
        if self.topics.is_empty() {
            return Err(invalid("topics", "list at least one source topic".into()));
        }
        match &self.key {
            KeySource::Field { pointer } => check_pointer(pointer).map_err(|m| invalid("key.pointer", m))?,
            KeySource::KafkaKey => {}
        }
        if let EventTimeSource::Field { pointer, .. } = &self.event_time {
            check_pointer(pointer).map_err(|m| invalid("event_time.pointer", m))?;
        }
        match self.window {
            WindowConfig::Tumbling { size } => positive_millis(size).map_err(|m| invalid("window.size", m))?,
            WindowConfig::Sliding { size, slide } => {
                positive_millis(size).map_err(|m| invalid("window.size", m))?;
                positive_millis(slide).map_err(|m| invalid("window.slide", m))?;
                if slide > size {
                    return Err(invalid(
                        "window.slide",
                        format!(
                            "slide ({}) must not exceed size ({}); use a tumbling window for slide = size",
                            humantime::format_duration(slide),
                            humantime::format_duration(size)
                        ),
                    ));
                }
                if size.as_millis() % slide.as_millis() != 0 {
                    return Err(invalid(
                        "window.slide",
                        "size must be a whole multiple of slide (e.g. size = \"60s\", slide = \"10s\")".into(),
                    ));
                }
            }
            WindowConfig::Session { gap } => positive_millis(gap).map_err(|m| invalid("window.gap", m))?,
        }
        let (window_key, window_span, slide) = match self.window {
            WindowConfig::Tumbling { size } => ("window.size", size, None),
            WindowConfig::Sliding { size, slide } => ("window.size", size, Some(slide)),
            WindowConfig::Session { gap } => ("window.gap", gap, None),
        };
        let spans = [
            (window_key, Some(window_span)),
            ("window.slide", slide),
            ("allowed_lateness", Some(self.allowed_lateness)),
            ("watermark.max_out_of_orderness", Some(self.watermark.max_out_of_orderness)),
            ("watermark.max_ahead_of_clock", Some(self.watermark.max_ahead_of_clock)),
            ("watermark.max_behind_clock", self.watermark.max_behind_clock),
        ];
        for (key, span) in spans {
            if span.is_some_and(|d| d > crate::time::MAX_SPAN) {
                return Err(invalid(key, "at most 100 years (event times are kept within years 0000 to 9999)".into()));
            }
        }
        if self.aggregates.is_empty() {
            return Err(invalid(
                "aggregates",
                "declare at least one aggregate, e.g. aggregates.events = { function = \"count\" }".into(),
            ));
        }
        for (name, agg) in &self.aggregates {
            if name.is_empty() || name.contains(',') || name.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("aggregates.{name}"),
                    "a name without ',' or control characters (it is a hash field of every entry and part of \
                     the merge function's aggregate list)"
                        .into(),
                ));
            }
            if name.starts_with('_') || name == "window_start" || name == "window_end" {
                return Err(invalid(
                    &format!("aggregates.{name}"),
                    "names starting with '_' and window_start/window_end are reserved for the entry layout".into(),
                ));
            }
            match (&agg.function, &agg.field) {
                (AggregateFunction::Count, Some(field)) => {
                    check_pointer(field).map_err(|m| invalid(&format!("aggregates.{name}.field"), m))?
                }
                (AggregateFunction::Count, None) => {}
                (function, None) => {
                    return Err(invalid(
                        &format!("aggregates.{name}.field"),
                        format!("{function:?} needs an input field, a JSON pointer such as \"/amount\""),
                    ))
                }
                (_, Some(field)) => {
                    check_pointer(field).map_err(|m| invalid(&format!("aggregates.{name}.field"), m))?
                }
            }
        }
        if let EmitConfig::Updates { interval } = self.emit {
            positive_millis(interval).map_err(|m| invalid("emit.interval", m))?;
        }
        if self.region.name.is_empty() || self.region.name.contains(':') {
            return Err(invalid("region.name", "a non-empty name without ':'".into()));
        }
        crate::region::KeyTemplate::parse(&self.region.key).map_err(|m| invalid("region.key", m))?;
        if self.region.ttl == Some(Duration::ZERO) {
            return Err(invalid("region.ttl", "a positive duration, or leave it out for no expiry".into()));
        }
        if let Some(changes) = &self.region.changes {
            if changes.topic.is_empty() {
                return Err(invalid("region.changes.topic", "the topic that receives the region's changes".into()));
            }
            let dead_letters = self.errors.deadletterqueue_topic_name.as_deref();
            if self.topics.contains(&changes.topic) || dead_letters == Some(changes.topic.as_str()) {
                return Err(invalid(
                    "region.changes.topic",
                    format!(
                        "`{}` is a source or dead-letter topic of this pipeline; the change feed needs its own topic",
                        changes.topic
                    ),
                ));
            }
        }
        if self.max_record_bytes == 0 {
            return Err(invalid("max_record_bytes", "a positive number of bytes".into()));
        }
        if matches!(self.window, WindowConfig::Session { .. }) && self.key != KeySource::KafkaKey {
            // A task sees one partition; a session spanning partitions would be
            // cut into per-partition sessions with different bounds.
            return Err(invalid(
                "key",
                "session windows need every record of a key in one partition: use key = { from = \"kafka_key\" } \
                 (Kafka's partitioner keeps one key in one partition), and produce with the session key as message key"
                    .into(),
            ));
        }
        if matches!(self.window, WindowConfig::Session { .. }) && self.late_records == LateAction::Amend {
            return Err(invalid(
                "late_records",
                "session windows cannot amend: a late record's session is unknown once purged; use \"drop\" or \"dead_letter\", or raise allowed_lateness".into(),
            ));
        }
        if self.event_time == EventTimeSource::ProcessingTime && self.late_records == LateAction::Amend {
            return Err(invalid("late_records", "processing-time windows have no late records; use \"drop\"".into()));
        }
        Ok(())
    }

    pub fn dead_letter_topic(&self) -> Option<&str> {
        self.errors.deadletterqueue_topic_name.as_deref()
    }
}

fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!("a JSON pointer starting with '/', e.g. \"/{pointer}\""))
    }
}

fn positive_millis(d: Duration) -> Result<(), String> {
    if d.as_millis() == 0 {
        Err("a positive duration of at least 1ms, e.g. \"10s\"".into())
    } else {
        Ok(())
    }
}
