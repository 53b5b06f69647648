//! The benchmark's knobs: environment variables, see `scripts/bench.sh -h`.

use std::time::Duration;

// Options.

#[derive(Debug, Clone)]
pub struct Options {
    pub events: usize,
    pub keys: u32,
    pub high_keys: u32,
    pub high_events: usize,
    /// Keys and events of the dense workloads (W1-dense, W2-dense).
    pub dense_keys: u32,
    pub dense_events: usize,
    pub w2_events: usize,
    pub partitions: i32,
    pub brokers: i32,
    pub workloads: Vec<String>,
    pub latency_secs: u64,
    pub latency_rate: Option<f64>,
    /// The live latency run's `emit` table (TOML inline), if not final.
    pub latency_emit: Option<String>,
    /// The live latency run's `connector.flush_interval`, if not the default.
    pub latency_flush: Option<String>,
    pub stress_keys: usize,
    /// Rounds of W1 with the change feed on against W1 without (0: none).
    pub changes_rounds: usize,
    pub sink_chunk: usize,
    pub sink_inflight: usize,
    pub run_timeout: Duration,
}

pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v} is not valid")),
        Err(_) => default,
    }
}

impl Options {
    pub fn from_env() -> Options {
        let events = env("BENCH_EVENTS", 1_000_000usize);
        Options {
            events,
            keys: env("BENCH_KEYS", 100_000u32),
            high_keys: env("BENCH_HIGH_KEYS", 10_000_000u32),
            high_events: env("BENCH_HIGH_EVENTS", events),
            dense_keys: env("BENCH_DENSE_KEYS", 100u32),
            dense_events: env("BENCH_DENSE_EVENTS", 3 * events),
            w2_events: env("BENCH_W2_EVENTS", events / 4),
            partitions: env("BENCH_PARTITIONS", 0i32),
            brokers: env("BENCH_BROKERS", 3i32),
            workloads: std::env::var("BENCH_WORKLOADS")
                .unwrap_or_else(|_| "w1,w2,w3,w1-10m,w1-dense,w2-dense,latency".into())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            latency_secs: env("BENCH_LATENCY_SECS", 25u64),
            latency_rate: std::env::var("BENCH_LATENCY_RATE").ok().map(|v| v.parse().expect("BENCH_LATENCY_RATE")),
            latency_emit: std::env::var("BENCH_LATENCY_EMIT").ok().filter(|v| !v.is_empty()),
            latency_flush: std::env::var("BENCH_LATENCY_FLUSH").ok().filter(|v| !v.is_empty()),
            stress_keys: env("BENCH_STRESS_KEYS", 10_000_000usize),
            changes_rounds: env("BENCH_CHANGES", 1usize),
            sink_chunk: env("BENCH_SINK_PIPELINE", 1_000usize),
            sink_inflight: env("BENCH_SINK_INFLIGHT", 4usize),
            run_timeout: Duration::from_secs(env("BENCH_RUN_TIMEOUT_SECS", 600u64)),
        }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.workloads.iter().any(|w| w == name)
    }
}
