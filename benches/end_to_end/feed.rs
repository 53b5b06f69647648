//! The change feed's cost (issue 13): W1 again with `region.changes` on
//! (`mode = "every"`, to `<topic>-changes`, as many partitions as the
//! source), against the same data set without it, in the same run. The
//! first round's plain half is W1's own connector run; later rounds run
//! both halves again, the feed first in even rounds, so a load that drifts
//! during the run falls on both.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::connector::{ConnectorChild, ConnectorRun, Run};
use crate::data::DataSet;
use crate::prom_text::Exposition;
use crate::report::si;

// The change feed's cost.

/// The feed's cost: the rounds, and the merge function's own cost with and
/// without the change captured (the sink ceiling's passes, Redis otherwise
/// idle).
pub struct FeedCost {
    pub topic: String,
    pub rounds: Vec<FeedRound>,
    pub sink_plain_us: f64,
    pub sink_plain_per_s: f64,
    pub sink_changes_us: f64,
    pub sink_changes_per_s: f64,
}

/// One round: the same data set without and with the change feed.
pub struct FeedRound {
    pub plain: Run,
    pub feed: Run,
}

impl FeedRound {
    /// Both runs finished cleanly and the feed published every change.
    pub fn valid(&self) -> bool {
        let published = self.feed.feed.as_ref().is_some_and(|f| f.complete(self.feed.written));
        published && self.plain.note.is_empty() && self.feed.note.is_empty()
    }
}

pub fn changes_topic(data: &DataSet) -> String {
    format!("{}-changes", data.topic)
}

pub async fn feed_rounds(
    connector: &ConnectorRun<'_>,
    first_plain: &Run,
    rounds: usize,
    topic: &str,
) -> Vec<FeedRound> {
    let mut out = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let feed_run = async || {
            let run = connector.run(&format!("-changes-{round}"), Some(topic)).await;
            print_run(round, "feed", &run);
            run
        };
        let plain_run = async || {
            let run = connector.run(&format!("-plain-{round}"), None).await;
            print_run(round, "plain", &run);
            run
        };
        let (plain, feed) = match round {
            1 => (first_plain.clone(), feed_run().await),
            r if r.is_multiple_of(2) => {
                let feed = feed_run().await;
                (plain_run().await, feed)
            }
            _ => {
                let plain = plain_run().await;
                (plain, feed_run().await)
            }
        };
        out.push(FeedRound { plain, feed });
    }
    out
}

fn print_run(round: usize, name: &str, run: &Run) {
    let published = run.feed.as_ref().map_or(String::new(), |f| format!(", {} changes published", f.published));
    println!(
        "    round {round}, {name}: {}/s ({:.1} s), {} entries written{published}, {:.2} CPU us/event {}",
        si(run.events_per_s),
        run.seconds,
        run.written,
        run.cpu_us_per_event,
        run.note
    );
}

/// What a run's change feed published.
#[derive(Default, Clone)]
pub struct Feed {
    /// `regionflow_changes_published_total`: changes Kafka acknowledged.
    pub published: u64,
    /// Messages appended to the feed topic during the run (its partitions'
    /// high watermarks).
    pub appended: u64,
    /// From the last entry write acknowledged to the topic holding every
    /// change.
    pub tail_ms: i64,
}

impl Feed {
    /// A feed run counts only if every entry written was published.
    pub fn complete(&self, written: u64) -> bool {
        self.published >= written && self.appended >= written
    }
}

/// The change feed topic as the harness sees it: how many messages its
/// partitions have taken (the mock broker drops old batches beyond 5 MiB
/// per partition, but its high watermarks keep counting).
pub struct FeedTopic {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    before: u64,
}

impl FeedTopic {
    pub fn new(brokers: &str, topic: &str, partitions: i32) -> FeedTopic {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer created");
        let mut feed = FeedTopic { consumer, topic: topic.to_string(), partitions, before: 0 };
        feed.before = feed.high_watermarks();
        feed
    }

    fn high_watermarks(&self) -> u64 {
        (0..self.partitions)
            .map(|p| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .expect("change feed watermarks");
                high.max(0) as u64
            })
            .sum()
    }

    /// Messages appended since this handle was made.
    pub fn appended(&self) -> u64 {
        self.high_watermarks() - self.before
    }
}

/// Waits until the connector has counted `written` changes published (or
/// `timeout` passed); returns its count.
pub async fn wait_published(child: &ConnectorChild, region: &str, written: f64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut published = 0.0;
    while Instant::now() < deadline {
        let text = child.metrics().unwrap_or_default();
        published = Exposition::parse(&text).sum("regionflow_changes_published_total", &[("region", region)]);
        if published >= written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    published as u64
}
