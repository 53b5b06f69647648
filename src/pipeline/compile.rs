//! Configuration compiled into the domain objects a pipeline runs on: the
//! record spec (for the decoder), the window spec, the region layout and
//! the task policy. This is the one place that reads a pipeline's
//! configuration; nothing on the hot path does.

use std::time::Duration;

use crate::config::{ChangeMode, EmitConfig, EventTimeSource, PipelineConfig, Settings, Tolerance, WindowConfig};
use crate::format::RecordSpec;
use crate::region::{KeyTemplate, RegionLayout};
use crate::time::{EventTimeBounds, Millis};
use crate::window::{AggregateFunction, LateAction, WindowKind, WindowSpec};

/// How a task treats its records and results, beyond the window.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPolicy {
    pub late_action: LateAction,
    /// Bad records go to the dead letters (`errors.tolerance = "all"`), or
    /// the first one stops the connector.
    pub tolerates_errors: bool,
    /// Windows follow the wall clock; results are at-least-once.
    pub processing_time: bool,
    /// The watermark's allowance for out-of-order records (zero for
    /// processing time).
    pub out_of_orderness: Duration,
    /// Quiet time after which a caught-up partition's watermark follows
    /// the wall clock (zero for processing time).
    pub idle_timeout: Duration,
    /// Running values of open windows are written this often (emit mode
    /// `updates`).
    pub update_interval: Option<Duration>,
    /// Replicas that must acknowledge the task's writes before a checkpoint.
    pub redundancy: usize,
    pub flush_interval: Duration,
    pub checkpoint_interval: Duration,
    pub max_pending_results: usize,
}

/// What the decoder extracts from a record.
pub fn record_spec(config: &PipelineConfig) -> RecordSpec {
    RecordSpec {
        key: config.key.clone(),
        event_time: config.event_time.clone(),
        inputs: config.aggregates.values().map(|a| (a.function, a.field.clone())).collect(),
        max_record_bytes: config.max_record_bytes,
        time_bounds: EventTimeBounds::new(config.watermark.max_ahead_of_clock, config.watermark.max_behind_clock),
    }
}

/// The window shape, lateness and aggregate functions.
pub fn window_spec(config: &PipelineConfig) -> WindowSpec {
    let ms = |d: Duration| d.as_millis() as Millis;
    let kind = match config.window {
        WindowConfig::Tumbling { size } => WindowKind::Tumbling { size: ms(size) },
        WindowConfig::Sliding { size, slide } => WindowKind::Sliding { size: ms(size), slide: ms(slide) },
        WindowConfig::Session { gap } => WindowKind::Session { gap: ms(gap) },
    };
    // A final-mode change feed publishes what finals write, so a window's
    // final must be written even when its last update holds the value.
    let fire_unchanged = config.region.changes.as_ref().is_some_and(|changes| changes.mode == ChangeMode::Final);
    WindowSpec { kind, allowed_lateness: ms(config.allowed_lateness), functions: functions(config), fire_unchanged }
}

/// The aggregate functions, in the order of every accumulator list.
pub fn functions(config: &PipelineConfig) -> Vec<AggregateFunction> {
    config.aggregates.values().map(|a| a.function).collect()
}

/// The aggregates as (function, entry field name), in accumulator order.
pub fn aggregates(config: &PipelineConfig) -> Vec<(AggregateFunction, String)> {
    config.aggregates.iter().map(|(name, a)| (a.function, name.clone())).collect()
}

/// Where and how results become region entries.
pub fn region_layout(key_prefix: &str, config: &PipelineConfig) -> RegionLayout {
    let region = &config.region;
    let template = KeyTemplate::parse(&region.key).expect("validated at configuration load");
    RegionLayout::new(key_prefix, &region.name, template, region.ttl, region.ttl_from)
        .with_changes(region.changes.as_ref().map(|changes| changes.mode))
}

pub fn task_policy(settings: &Settings, config: &PipelineConfig) -> TaskPolicy {
    let processing_time = config.event_time == EventTimeSource::ProcessingTime;
    let (out_of_orderness, idle_timeout) = if processing_time {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (config.watermark.max_out_of_orderness, config.watermark.idle_timeout)
    };
    TaskPolicy {
        late_action: config.late_records,
        tolerates_errors: config.errors.tolerance == Tolerance::All,
        processing_time,
        out_of_orderness,
        idle_timeout,
        update_interval: match config.emit {
            EmitConfig::Final => None,
            EmitConfig::Updates { interval } => Some(interval),
        },
        redundancy: config.region.redundancy,
        flush_interval: settings.connector.flush_interval,
        checkpoint_interval: settings.connector.checkpoint_interval,
        max_pending_results: settings.connector.max_pending_results,
    }
}
