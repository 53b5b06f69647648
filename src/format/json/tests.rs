//! Decoding: each kind of bad record fails at its stage with a reason.

use super::*;
use crate::config::Settings;
use crate::format::SourceRecord;

/// `decoder`'s event of `record`, owning its key.
fn decode(decoder: &JsonDecoder, record: &SourceRecord, now: Millis) -> Result<Event<'static>, DecodeError> {
    decoder.decode(record.view(), now).map(Event::into_owned)
}

fn pipeline(key: &str, time: &str) -> RecordSpec {
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
    crate::pipeline::compile::record_spec(&Settings::from_toml_str(&toml).expect("valid").pipelines["p"])
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
        decode(&json_decoder(), &record(r#"{"page":"/a","ts":1234,"amount":2.5,"user":"u1"}"#), 0).expect("valid");
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

/// A key the payload holds as is is borrowed from the record, not
/// allocated per record; one that must be unescaped or rendered is owned,
/// and both read the same.
#[test]
fn a_plain_key_is_borrowed_from_the_record() {
    let d = json_decoder();
    let plain = record(r#"{"page":"/a","ts":1,"amount":1,"user":"u"}"#);
    let escaped = record(r#"{"page":"\/a","ts":1,"amount":1,"user":"u"}"#);
    let number = record(r#"{"page":12,"ts":1,"amount":1,"user":"u"}"#);
    fn key<'a>(d: &JsonDecoder, r: &'a SourceRecord) -> Cow<'a, str> {
        d.decode(r.view(), 0).expect("valid").key
    }
    assert!(matches!(key(&d, &plain), Cow::Borrowed("/a")), "{:?}", key(&d, &plain));
    assert!(matches!(key(&d, &escaped), Cow::Owned(ref k) if k == "/a"), "{:?}", key(&d, &escaped));
    assert!(matches!(key(&d, &number), Cow::Owned(ref k) if k == "12"), "{:?}", key(&d, &number));
    let kafka_key = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "field", pointer = "/ts" }"#));
    assert!(matches!(kafka_key.decode(plain.view(), 0).expect("valid").key, Cow::Borrowed("k1")));
}

#[test]
fn each_bad_record_fails_at_its_stage() {
    let d = json_decoder();
    let cases = [
        (r#"{"page":"/a","ts":1,"amount":1,"user":"u""#, Stage::Parse, "invalid JSON"),
        (r#"{"ts":1,"amount":1,"user":"u"}"#, Stage::Key, "missing key field /page"),
        (r#"{"page":{"x":1},"ts":1,"amount":1,"user":"u"}"#, Stage::Key, "not a string"),
        (r#"{"page":"","ts":1,"amount":1,"user":"u"}"#, Stage::Key, "empty key"),
        (r#"{"page":"/a","amount":1,"user":"u"}"#, Stage::EventTime, "missing event time field /ts"),
        (r#"{"page":"/a","ts":"soon","amount":1,"user":"u"}"#, Stage::EventTime, "not epoch milliseconds"),
        (r#"{"page":"/a","ts":1,"amount":"12","user":"u"}"#, Stage::Aggregate, "/amount is not a number"),
        (r#"{"page":"/a","ts":1,"user":"u"}"#, Stage::Aggregate, "missing field /amount"),
    ];
    for (payload, stage, reason) in cases {
        let error = decode(&d, &record(payload), 0).expect_err(payload);
        assert_eq!(error.stage, stage, "{payload}");
        assert!(error.reason.contains(reason), "{payload}: {}", error.reason);
    }
    let big = format!(r#"{{"page":"{}","ts":1,"amount":1,"user":"u"}}"#, "x".repeat(300));
    assert_eq!(decode(&d, &record(&big), 0).expect_err("oversize").stage, Stage::Size);
    let empty = SourceRecord { payload: None, ..record("") };
    assert_eq!(decode(&d, &empty, 0).expect_err("tombstone").stage, Stage::Parse);
}

#[test]
fn time_formats_and_kafka_sources() {
    let seconds = JsonDecoder::new(&pipeline(
        r#"{ from = "kafka_key" }"#,
        r#"{ from = "field", pointer = "/t", format = "epoch_seconds" }"#,
    ));
    let e = decode(&seconds, &record(r#"{"t":"12.5","amount":1,"user":"u"}"#), 0).expect("valid");
    assert_eq!((e.time, &*e.key), (12_500, "k1"));
    let rfc = JsonDecoder::new(&pipeline(
        r#"{ from = "kafka_key" }"#,
        r#"{ from = "field", pointer = "/t", format = "rfc3339" }"#,
    ));
    let now = 1_704_067_201_500;
    let e = decode(&rfc, &record(r#"{"t":"2024-01-01T00:00:01.5Z","amount":1,"user":"u"}"#), now).expect("valid");
    assert_eq!(e.time, 1_704_067_201_500);
    let kafka_ts = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "kafka_timestamp" }"#));
    assert_eq!(decode(&kafka_ts, &record(r#"{"amount":1,"user":"u"}"#), 0).expect("valid").time, 5_000);
    let processing = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "processing_time" }"#));
    assert_eq!(decode(&processing, &record(r#"{"amount":1,"user":"u"}"#), 99).expect("valid").time, 99);
    let no_key = SourceRecord { key: None, ..record(r#"{"amount":1,"user":"u"}"#) };
    assert_eq!(decode(&kafka_ts, &no_key, 0).expect_err("no key").stage, Stage::Key);
    let empty_key = SourceRecord { key: Some(Vec::new()), ..record(r#"{"amount":1,"user":"u"}"#) };
    assert_eq!(decode(&kafka_ts, &empty_key, 0).expect_err("empty key").reason, "empty key");
}

/// Times that would blind the partition (far future) or overflow window
/// arithmetic (non-finite, beyond `i64`) fail at stage `event_time`; the
/// default bound is one hour ahead of the wall clock, none behind it.
#[test]
fn implausible_event_times_are_refused() {
    const NOW: Millis = 1_700_000_000_000;
    let millis = json_decoder();
    let seconds = JsonDecoder::new(&pipeline(
        r#"{ from = "kafka_key" }"#,
        r#"{ from = "field", pointer = "/ts", format = "epoch_seconds" }"#,
    ));
    let year_3000 = 32_503_680_000_000i64;
    for (decoder, ts, reason) in [
        (&millis, year_3000.to_string(), "ahead of the wall clock"),
        (&millis, (NOW + 3_600_001).to_string(), "ahead of the wall clock"),
        (&millis, r#""inf""#.to_string(), "outside years"),
        (&millis, r#""-inf""#.to_string(), "outside years"),
        (&millis, r#""NaN""#.to_string(), "outside years"),
        (&millis, "1e300".to_string(), "outside years"),
        (&millis, "-1e300".to_string(), "outside years"),
        (&millis, "9223372036854775807".to_string(), "outside years"),
        (&seconds, "1e17".to_string(), "outside years"),
        (&seconds, r#""Infinity""#.to_string(), "outside years"),
        (&seconds, (year_3000 / 1000).to_string(), "ahead of the wall clock"),
    ] {
        let payload = format!(r#"{{"page":"/a","ts":{ts},"amount":1,"user":"u"}}"#);
        let error = decode(decoder, &record(&payload), NOW).expect_err(&payload);
        assert_eq!(error.stage, Stage::EventTime, "{payload}");
        assert!(error.reason.contains(reason), "{payload}: {}", error.reason);
    }
    let at_bound = format!(r#"{{"page":"/a","ts":{},"amount":1,"user":"u"}}"#, NOW + 3_600_000);
    assert_eq!(decode(&millis, &record(&at_bound), NOW).map(|e| e.time), Ok(NOW + 3_600_000));
    let long_ago = r#"{"page":"/a","ts":0,"amount":1,"user":"u"}"#;
    assert_eq!(decode(&millis, &record(long_ago), NOW).map(|e| e.time), Ok(0), "no lower bound by default");

    let kafka_ts = JsonDecoder::new(&pipeline(r#"{ from = "kafka_key" }"#, r#"{ from = "kafka_timestamp" }"#));
    let future = SourceRecord { timestamp: Some(year_3000), ..record(r#"{"amount":1,"user":"u"}"#) };
    assert_eq!(decode(&kafka_ts, &future, NOW).expect_err("year 3000").stage, Stage::EventTime);

    let mut bounded = pipeline(r#"{ from = "field", pointer = "/page" }"#, r#"{ from = "field", pointer = "/ts" }"#);
    bounded.time_bounds =
        EventTimeBounds::new(std::time::Duration::from_secs(3600), Some(std::time::Duration::from_secs(60)));
    let error = decode(&JsonDecoder::new(&bounded), &record(long_ago), NOW).expect_err("too old");
    assert!(error.reason.contains("behind the wall clock"), "{}", error.reason);
}

/// The single-pass top-level reader and the `Value` tree give the same
/// event, or the same error, for every kind of payload.
#[test]
fn top_level_fields_decode_exactly_like_the_tree() {
    let decoders = [
        (r#"{ from = "field", pointer = "/page" }"#, r#"{ from = "field", pointer = "/ts" }"#),
        (r#"{ from = "field", pointer = "/0" }"#, r#"{ from = "field", pointer = "/ts", format = "epoch_seconds" }"#),
        (r#"{ from = "field", pointer = "/a~1b" }"#, r#"{ from = "field", pointer = "/t~0", format = "rfc3339" }"#),
    ];
    let payloads: Vec<Vec<u8>> = [
        r#"{"page":"/a","ts":1234,"amount":2.5,"user":"u1"}"#,
        r#"{"pa\u0067e":"/\u00e9","ts":"1234","amount":-0.0,"user":{"a":[1,2.50,"x"]},"coupon":[]}"#,
        r#"{"page":"a","page":"b","ts":1,"ts":2,"amount":1e2,"user":null,"coupon":false}"#,
        r#"{"page":null,"ts":1,"amount":1}"#,
        r#"{"page":true,"ts":1.5e3,"amount":3,"user":true}"#,
        r#"{"page":12345678901234567890,"ts":-7,"amount":1,"user":1.0}"#,
        r#"{"page":-1.25,"ts":1,"amount":1,"user":-3}"#,
        r#"{"page":{"x":[1,{"y":null}]},"ts":1,"amount":1,"user":"u"}"#,
        r#"{"page":"p","ts":1,"amount":"1","user":"u"}"#,
        r#"{"page":"p","ts":null,"amount":1,"user":"u"}"#,
        r#"{"0":"zero","ts":"12.5","amount":1,"user":[1],"a/b":"slash","t~":"2024-01-01T00:00:01Z"}"#,
        r#"{"a/b":7,"t~":"yesterday","0":false,"ts":1,"amount":1}"#,
        r#"  {"page":"p","ts":1,"amount":1,"user":"u","extra":{"deep":[[[]]],"s":"\"\\"}}  "#,
        r#"{}"#,
        r#"["zero","b"]"#,
        r#""str""#,
        r#"42"#,
        r#"null"#,
        r#"{"page":"a",}"#,
        r#"{"page":"a"} x"#,
        r#"{"page":"a""#,
        r#"{"page" "a"}"#,
        r#"{"page":tru}"#,
        r#"{"page":"\x"}"#,
        "",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .chain([
        b"{\"skipped\":\"\xff\",\"page\":\"a\",\"ts\":1,\"amount\":1}".to_vec(),
        b"{\"page\":\"\xc3\",\"ts\":1,\"amount\":1}".to_vec(),
    ])
    .collect();
    for (key, time) in decoders {
        let top = JsonDecoder { max_record_bytes: 10_000, ..JsonDecoder::new(&pipeline(key, time)) };
        assert!(top.top_level.is_some(), "single-segment pointers read top-level fields");
        let tree = JsonDecoder { top_level: None, max_record_bytes: 10_000, ..JsonDecoder::new(&pipeline(key, time)) };
        for payload in &payloads {
            let record = SourceRecord { payload: Some(payload.clone()), ..record("") };
            assert_eq!(
                decode(&top, &record, 0),
                decode(&tree, &record, 0),
                "{key} {time} {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}

/// The one difference: a skipped field is not built, so it is not subject
/// to the parser's nesting limit (128), which guards the tree's recursion.
#[test]
fn deeply_nested_skipped_fields_do_not_hit_the_nesting_limit() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let skipped = format!(r#"{{"page":"a","x":{deep},"ts":1,"amount":1,"user":"u"}}"#);
    let wanted = format!(r#"{{"page":{deep},"ts":1,"amount":1,"user":"u"}}"#);
    let top = JsonDecoder { max_record_bytes: 10_000, ..json_decoder() };
    let tree = JsonDecoder { top_level: None, max_record_bytes: 10_000, ..json_decoder() };
    let skipped = SourceRecord { payload: Some(skipped.into_bytes()), ..record("") };
    assert_eq!(decode(&top, &skipped, 0).map(|e| e.time), Ok(1));
    let error = decode(&tree, &skipped, 0).expect_err("too deep for the tree");
    assert!(error.reason.contains("recursion limit"), "{}", error.reason);
    let wanted = SourceRecord { payload: Some(wanted.into_bytes()), ..record("") };
    assert_eq!(decode(&top, &wanted, 0), decode(&tree, &wanted, 0), "a wanted field is built, limit included");
}

#[test]
fn deeper_pointers_parse_the_whole_value() {
    let d = JsonDecoder::new(&pipeline(
        r#"{ from = "field", pointer = "/user/id" }"#,
        r#"{ from = "field", pointer = "/ts" }"#,
    ));
    assert!(d.top_level.is_none());
    let e = decode(&d, &record(r#"{"user":{"id":"u9"},"ts":3,"amount":1}"#), 0).expect("valid");
    assert_eq!((&*e.key, e.time), ("u9", 3));
}

mod scan {
    //! The hand-written pass against `serde_json`'s reader: where it
    //! answers, it answers the same; it never accepts what `serde_json`
    //! refuses.

    use proptest::prelude::*;

    use super::super::fields::TopLevelNames;
    use super::super::scan;

    fn names() -> TopLevelNames {
        TopLevelNames::of(["/page", "/ts", "/amount", "/user"]).expect("top level")
    }

    /// One value, valid or nearly so.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("nul".to_string()),
            Just("truex".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{0,4})?([eE][+-]?[0-9]{0,4})?",
            "[-+.0-9eE]{1,8}",
            "\"[a-z/ é\u{1F600}]{0,6}\"",
            "\"[a-z\\\\\"\t\u{1}]{0,6}\"",
            "\"\\\\u[0-9a-fA-FxX]{4}\"",
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..3).prop_map(|fields| {
                    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// A top-level object of wanted and other fields, then perhaps a
    /// byte changed, dropped or added anywhere.
    fn payload() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("page"),
            Just("ts"),
            Just("amount"),
            Just("user"),
            Just("other"),
            Just("pa\\u0067e"),
            Just("t\ts")
        ];
        let fields = prop::collection::vec((name, value(), "[ \t\n]{0,2}"), 0..6);
        let edit = prop::option::of((any::<prop::sample::Index>(), 0..3u8, any::<char>()));
        (fields, edit).prop_map(|(fields, edit)| {
            let fields: Vec<String> = fields.iter().map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}")).collect();
            let mut text = format!(" {{{}}} ", fields.join(","));
            if let Some((at, kind, c)) = edit {
                let mut chars: Vec<char> = text.chars().collect();
                let i = at.index(chars.len());
                match kind {
                    0 => chars[i] = c,
                    1 => {
                        chars.remove(i);
                    }
                    _ => chars.insert(i, c),
                }
                text = chars.into_iter().collect();
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn the_fast_pass_reads_what_serde_json_reads(text in payload()) {
            let names = names();
            if let Some(values) = scan::read(&names.names, &text) {
                let reference = names.read_with_serde(&text);
                prop_assert!(matches!(&reference, Ok(Some(_))), "accepted what serde_json reads as {reference:?}: {text}");
                prop_assert_eq!(Some(values), reference.unwrap());
            }
        }
    }

    #[test]
    fn the_fast_pass_takes_the_common_records() {
        let names = names();
        for text in [
            r#"{"page":"/a","ts":1700000000123,"amount":12.5,"user":"u1","x":[1,{"y":null}]}"#,
            r#" { "ts" : -7 , "amount" : 1e2 , "user" : true , "page" : null } "#,
            r#"{}"#,
            r#"{"ts":-0,"amount":-0.0,"page":-9223372036854775809,"user":18446744073709551616}"#,
            r#"{"ts":-9223372036854775808,"amount":1e-400,"page":0.1e1,"user":123456789012345678901234567890}"#,
        ] {
            let values = scan::read(&names.names, text);
            assert!(values.is_some(), "{text}");
            assert_eq!(values, names.read_with_serde(text).expect("valid"), "{text}");
        }
        for text in [
            r#"{"amount":1e400}"#,
            r#"{"page":"\n"}"#,
            r#"{"page":{"a":1}}"#,
            r#"[1]"#,
            r#"{"page":"a",}"#,
            r#"{"ts":01}"#,
        ] {
            assert_eq!(scan::read(&names.names, text), None, "{text}");
        }
    }
}
