//! Every integration test, in one binary: each module was its own test
//! binary once, and each linked librdkafka; one link keeps CI's disk and
//! build time small. `cargo test --test integration -- chaos::` runs one
//! module.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod change_feed;
mod chaos;
mod checkpoint_cli;
mod containers;
mod deployment_files;
mod end_to_end;
mod failover;
mod fencing;
mod kafka_security;
mod merge_script;
mod metrics_endpoint;
mod observability;
mod poison_records;
mod readiness;
mod redis_cluster_harness;
mod redis_tls;
mod region_cli;
mod region_conformance;
mod region_writes;
mod replication;
mod secrets;
mod startup_checks;
