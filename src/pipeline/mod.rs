//! A pipeline, compiled from its configuration, and its partition tasks.
//!
//! [`Pipeline`] holds what every task of one pipeline shares: the decoder,
//! window specification, region layout and region, dead-letter producer and
//! metrics. The Kafka source starts one [`task::PartitionTask`] per assigned
//! partition and feeds it batches of records.

pub mod task;

use std::sync::Arc;

use crate::checkpoint::CheckpointStore;
use crate::config::{EmitConfig, EventTimeSource, PipelineConfig, Settings, Tolerance};
use crate::metrics::Metrics;
use crate::region::{Region, RegionLayout};
use crate::source::dead_letter::DeadLetters;
use crate::source::decode::{decoder_for, Decoder};
use crate::window::WindowSpec;

pub use task::{PartitionSource, PartitionTask, Started, TaskError, TaskHandle};

pub struct Pipeline {
    pub name: Arc<str>,
    pub config: PipelineConfig,
    pub decoder: Box<dyn Decoder>,
    pub window: WindowSpec,
    pub layout: RegionLayout,
    pub region: Arc<dyn Region>,
    pub dead_letters: Option<DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub checkpoint_interval: std::time::Duration,
    pub flush_interval: std::time::Duration,
    pub max_pending_results: usize,
}

impl Pipeline {
    pub fn new(
        name: &str,
        settings: &Settings,
        region: Arc<dyn Region>,
        checkpoints: Arc<dyn CheckpointStore>,
        dead_letters: Option<DeadLetters>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let config = settings.pipelines[name].clone();
        metrics.init_pipeline(name, &config.region.name, &config.topics);
        Pipeline {
            name: name.into(),
            decoder: decoder_for(&config),
            window: WindowSpec::from_config(&config),
            layout: RegionLayout::new(&settings.redis.key_prefix, &config),
            region,
            dead_letters,
            metrics,
            checkpoints,
            checkpoint_interval: settings.connector.checkpoint_interval,
            flush_interval: settings.connector.flush_interval,
            max_pending_results: settings.connector.max_pending_results,
            config,
        }
    }

    pub fn processing_time(&self) -> bool {
        self.config.event_time == EventTimeSource::ProcessingTime
    }

    pub fn tolerates_errors(&self) -> bool {
        self.config.errors.tolerance == Tolerance::All
    }

    pub fn update_interval(&self) -> Option<std::time::Duration> {
        match self.config.emit {
            EmitConfig::Final => None,
            EmitConfig::Updates { interval } => Some(interval),
        }
    }

    /// Aggregate names in the order of the operator's accumulators.
    pub fn aggregate_names(&self) -> Vec<String> {
        self.config.aggregates.keys().cloned().collect()
    }
}
