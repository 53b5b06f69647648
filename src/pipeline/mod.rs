//! A pipeline, compiled from its configuration, and its partition tasks.
//!
//! [`Pipeline`] holds what every task of one pipeline shares: the decoder,
//! window specification, region layout and region, task policy,
//! dead-letter and change feed producers, checkpoint store and metrics, all built once at
//! start ([`compile`]). The connector starts one [`task::PartitionTask`]
//! per assigned partition and feeds it batches of records.

pub mod compile;
pub mod task;

use std::sync::Arc;

use crate::checkpoint::CheckpointStore;
use crate::config::Settings;
use crate::format::{decoder_for, Decoder};
use crate::kafka::{ChangeFeed, DeadLetters};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::region::{Region, RegionLayout};
use crate::time::Clock;
use crate::window::WindowSpec;

pub use compile::TaskPolicy;
pub use task::{PartitionSource, PartitionTask, Started, TaskError, TaskHandle};

pub struct Pipeline {
    pub name: Arc<str>,
    pub decoder: Box<dyn Decoder>,
    pub window: WindowSpec,
    pub layout: RegionLayout,
    pub policy: TaskPolicy,
    pub region: Arc<dyn Region>,
    pub dead_letters: Option<DeadLetters>,
    pub changes: Option<ChangeFeed>,
    pub metrics: PipelineMetrics,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub clock: Clock,
}

/// What a pipeline produces to Kafka: dead letters and region changes,
/// each when configured.
#[derive(Clone, Default)]
pub struct KafkaOutputs {
    pub dead_letters: Option<DeadLetters>,
    pub changes: Option<ChangeFeed>,
}

impl Pipeline {
    /// Compiles pipeline `name` of `settings` onto its region, the
    /// checkpoint store and its Kafka outputs.
    pub fn compile(
        name: &str,
        settings: &Settings,
        region: Arc<dyn Region>,
        checkpoints: Arc<dyn CheckpointStore>,
        outputs: KafkaOutputs,
        metrics: &Arc<Metrics>,
    ) -> Pipeline {
        let config = &settings.pipelines[name];
        Pipeline {
            name: name.into(),
            decoder: decoder_for(config.format, &compile::record_spec(config)),
            window: compile::window_spec(config),
            layout: compile::region_layout(&settings.redis.key_prefix, config),
            policy: compile::task_policy(settings, config),
            region,
            dead_letters: outputs.dead_letters,
            changes: outputs.changes,
            metrics: metrics.pipeline(name, &config.region.name, &config.topics),
            checkpoints,
            clock: Clock::default(),
        }
    }
}
