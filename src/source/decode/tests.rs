//! Decoding: each kind of bad record fails at its stage with a reason.

use super::*;
use crate::config::Settings;

fn pipeline(key: &str, time: &str) -> PipelineConfig {
    let toml = format!(
        r#"
[kafka]
brokers = "b:9092"
[redis]
nodes = ["redis://r:1"]
[pipelines.p]
topics = ["t"]
key = {key}
event_time = {time}
window = {{ kind = "tumbling", size = "10s" }}
max_record_bytes = 200
aggregates.n = {{ function = "count" }}
aggregates.total = {{ function = "sum", field = "/amount" }}
aggregates.users = {{ function = "distinct_count", field = "/user" }}
aggregates.last_user = {{ function = "last", field = "/user" }}
aggregates.with_coupon = {{ function = "count", field = "/coupon" }}
region = {{ name = "r" }}
"#
    );
    Settings::from_toml_str(&toml).expect("valid").pipelines["p"].clone()
}

fn record(payload: &str) -> SourceRecord {
    SourceRecord {
        offset: 7,
        timestamp: Some(5_000),
        key: Some(b"k1".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
    }
}

fn json_decoder() -> JsonDecoder {
    JsonDecoder::new(&pipeline(r#"{ from = "field", pointer = "/page" }"#, r#"{ from = "field", pointer = "/ts" }"#))
}

#[test]
fn decodes_key_time_and_inputs() {
    let event =
        json_decoder().decode(&record(r#"{"page":"/a","ts":1234,"amount":2.5,"user":"u1"}"#), 0).expect("valid");
    assert_eq!(&*event.key, "/a");
    assert_eq!(event.time, 1234);
    assert_eq!(event.offset, 7);
    // Aggregates in name order: last_user, n, total, users, with_coupon.
    assert_eq!(event.inputs[0], Input::Text("u1".into()));
    assert_eq!(event.inputs[1], Input::Unit);
    assert_eq!(event.inputs[2], Input::Number(2.5));
    assert_eq!(event.inputs[3], Input::Hash(stable_hash(b"u1")));
    assert_eq!(event.inputs[4], Input::Absent, "count over a missing optional field does not count");
}

#[test]
fn each_bad_record_fails_at_its_stage() {
    let d = json_decoder();
    let cases = [
        (r#"{"page":"/a","ts":1,"amount":1,"user":"u""#, Stage::Parse, "invalid JSON"),
        (r#"{"ts":1,"amount":1,"user":"u"}"#, Stage::Key, "missing key field /page"),
        (r#"{"page":{"x":1},"ts":1,"amount":1,"user":"u"}"#, Stage::Key, "not a string"),
        (r#"{"page":"/a","amount":1,"user":"u"}"#, Stage::EventTime, "missing event time field /ts"),
        (r#"{"page":"/a","ts":"soon","amount":1,"user":"u"}"#, Stage::EventTime, "not epoch milliseconds"),
        (r#"{"page":"/a","ts":1,"amount":"12","user":"u"}"#, Stage::Aggregate, "/amount is not a number"),
        (r#"{"page":"/a","ts":1,"user":"u"}"#, Stage::Aggregate, "missing field /amount"),
    ];
    for (payload, stage, reason) in cases {
        let error = d.decode(&record(payload), 0).expect_err(payload);
        assert_eq!(error.stage, stage, "{payload}");
        assert!(error.reason.contains(reason), "{payload}: {}", error.reason);
    }
    let big = format!(r#"{{"page":"{}","ts":1,"amount":1,"user":"u"}}"#, "x".repeat(300));
    assert_eq!(d.decode(&record(&big), 0).expect_err("oversize").stage, Stage::Size);
    let empty = SourceRecord { payload: None, ..record("") };
    assert_eq!(d.decode(&empty, 0).expect_err("tombstone").stage, Stage::Parse);
}

#[test]
fn time_formats_and_kafka_sources() {
    let seconds = JsonDecoder::new(&pipeline(
        r#"{ from = "kafka_key" }"#,
        r#"{ from = "field", pointer = "/t", format = "epoch_seconds" }"#,
    ));
    let e = seconds.decode(&record(r#"{"t":"12.5","amount":1,"user":"u"}"#), 0).expect("valid");
    assert_eq!((e.time, &*e.key), (12_500, "k1"));
    let rfc = JsonDecoder::new(&pipeline(
        r#"{ from = "kafka_key" }"#,
        r#"{ from = "field", pointer = "/t", format = "rfc3339" }"#,
    ));
    let e = rfc.decode(&record(r#"{"t":"2024-01-01T00:00:01.5Z","amount":1,"user":"u"}"#), 0).expect("valid");
    assert_eq!(e.time, 1_704_067_201_500);
    let kafka_ts = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "kafka_timestamp" }"#));
    assert_eq!(kafka_ts.decode(&record(r#"{"amount":1,"user":"u"}"#), 0).expect("valid").time, 5_000);
    let processing = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "processing_time" }"#));
    assert_eq!(processing.decode(&record(r#"{"amount":1,"user":"u"}"#), 99).expect("valid").time, 99);
    let no_key = SourceRecord { key: None, ..record(r#"{"amount":1,"user":"u"}"#) };
    assert_eq!(kafka_ts.decode(&no_key, 0).expect_err("no key").stage, Stage::Key);
}
