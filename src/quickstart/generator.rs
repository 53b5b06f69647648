//! A generator of realistic page views: a few hot pages and a long tail
//! (Zipf-like skew), users with sessions, event times up to 800 ms out of
//! order, and a trickle of very late and malformed records so the late and
//! dead-letter paths show up in the metrics.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::time::now_millis;

const PAGES: usize = 200;
const USERS: u64 = 50_000;
const COUNTRIES: [&str; 8] = ["DE", "US", "FR", "BR", "IN", "JP", "GB", "NL"];

pub struct PageViews {
    rng: StdRng,
    /// Cumulative weights for page i ∝ 1 / (i + 1).
    cumulative: Vec<f64>,
}

impl PageViews {
    pub fn new(seed: u64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..PAGES)
            .map(|i| {
                total += 1.0 / (i as f64 + 1.0);
                total
            })
            .collect();
        PageViews { rng: StdRng::seed_from_u64(seed), cumulative }
    }

    /// One record: (Kafka key, JSON value).
    pub fn next_record(&mut self, now: i64) -> (String, String) {
        let user = self.rng.random_range(0..USERS);
        let roll: f64 = self.rng.random_range(0.0..*self.cumulative.last().expect("PAGES > 0"));
        let page = self.cumulative.partition_point(|&c| c < roll);
        let ts = match self.rng.random_range(0..1000) {
            0 => now - 60_000,
            _ => now - self.rng.random_range(0..800),
        };
        let value = if self.rng.random_range(0..2000) == 0 {
            format!("{{\"user\": \"u{user}\", \"page\": ")
        } else {
            format!(
                r#"{{"user":"u{user}","page":"/page/{page}","ts":{ts},"duration_ms":{},"country":"{}"}}"#,
                self.rng.random_range(100..30_000),
                COUNTRIES[self.rng.random_range(0..COUNTRIES.len())]
            )
        };
        (format!("u{user}"), value)
    }
}

/// Produces page views into `topic` at about `rate` per second until cancelled.
pub async fn produce(producer: FutureProducer, topic: String, rate: u64, stop: CancellationToken) {
    let mut views = PageViews::new(7);
    let tick = Duration::from_millis(20);
    let per_tick = if rate == 0 { 5_000 } else { (rate * tick.as_millis() as u64 / 1000).max(1) };
    let mut interval = tokio::time::interval(tick);
    while !stop.is_cancelled() {
        interval.tick().await;
        let now = now_millis();
        for _ in 0..per_tick {
            let (key, value) = views.next_record(now);
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            if let Err((e, _)) = producer.send_result(record) {
                tracing::warn!(error = %e, "generator: produce queue full; slowing down");
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
        }
    }
}
