//! regionflow: a Kafka-to-Redis stream processor.
//!
//! A record travels through the modules in one direction:
//! [`kafka`] (the group consumer) → [`format`] (decoding into events) →
//! [`time`] (event time, watermarks) → [`window`] (assigners, aggregates,
//! operator state) → [`region`] (entry layout, the result-sink trait) →
//! [`redis`] (the Redis Cluster region writer, merge function and
//! checkpoint store). [`pipeline`] compiles each configured pipeline and
//! runs one task per assigned partition; [`checkpoint`] is the store's seam
//! and the state codec; [`connector`] is the process around the tasks
//! (dispatch, assignments, shutdown); [`app`] builds every component from
//! the [`config`]; [`metrics`] exports what happens; [`quickstart`] is the
//! self-contained demo. `ARCHITECTURE.md` walks one record and one
//! checkpoint through them.

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod connector;
pub mod format;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod quickstart;
pub mod redis;
pub mod region;
pub mod time;
pub mod window;
