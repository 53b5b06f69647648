//! The shared integration-test harness: real servers started per test and
//! torn down even when the test fails.
#![allow(dead_code)]

pub mod connector;
pub mod kafka;
pub mod redis_cluster;
pub mod reference;

/// Logs to the test's captured output (`RUST_LOG` filters, default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
