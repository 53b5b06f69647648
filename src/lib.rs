//! regionflow: a Kafka-to-Redis stream processor.
//!
//! A record travels through the modules in one direction:
//! [`source`] (Kafka, decoding, dead letters) → [`time`] (event time,
//! watermarks) → [`window`] (assigners, aggregates, operator state) →
//! [`region`] (entry layout, Redis Cluster writer, in-memory region).
//! [`checkpoint`] stores each task's state and ownership epoch in Redis;
//! [`pipeline`] runs one task per assigned partition over them;
//! [`connector`] is the process around the tasks (consumer group,
//! rebalances, shutdown); [`metrics`] exports what happens; [`config`] is
//! the typed configuration everything is built from; [`embedded`] is the
//! self-contained quick-start.

pub mod checkpoint;
pub mod config;
pub mod connector;
pub mod embedded;
pub mod metrics;
pub mod pipeline;
pub mod region;
pub mod source;
pub mod time;
pub mod window;
