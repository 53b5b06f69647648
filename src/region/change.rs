//! Entry changes: what the change feed and a region export carry.
//!
//! Every change the merge function applies to an entry (a first write, a
//! merge of another partition's partial, an amendment, an update, a
//! deletion) raises the entry's *version*, a counter stored in the entry's
//! hidden field `_v` atomically with the change. A [`Change`] is the entry
//! as that change left it: its public fields exactly as `HGETALL` shows
//! them, or a deletion. Because a version names one state of one entry,
//! two copies of `(entry, version)` are the same change, and a consumer
//! that keeps the highest version per entry converges to the region.
//!
//! Encoding sits behind [`ChangeFormat`], as decoding sits behind
//! `format::Decoder`; [`JsonChanges`] is the one format so far.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::time::Millis;

/// The hidden field holding an entry's version.
pub const VERSION_FIELD: &str = "_v";

/// Which changes are published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeMode {
    /// Every change: running updates (emit = "updates") included.
    #[default]
    Every,
    /// Changes made by final results, amendments and deletions; the
    /// running updates of open windows are left out.
    Final,
}

/// What a change did to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// The entry exists with these fields (created or changed).
    Upsert,
    /// The entry is gone (its last partial was retracted).
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
        }
    }
}

/// One entry as a change left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The full Redis key of the entry, `<prefix>:<region>:<entry key>`:
    /// the Kafka message key, so that one entry's changes share a partition.
    pub entry: String,
    /// The group key the entry aggregates.
    pub key: Arc<str>,
    pub window_start: Millis,
    pub window_end: Millis,
    pub version: u64,
    pub op: ChangeOp,
    /// The public fields after the change, in `HGETALL` order, `window_start`
    /// and `window_end` among them; empty for a deletion.
    pub fields: Vec<(String, String)>,
}

/// A change as a Kafka message: key, value (`None` is a tombstone) and
/// headers.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedChange {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
}

/// Headers on every change message, so that a consumer can route and
/// deduplicate a tombstone, which has no value.
pub const HEADER_REGION: &str = "regionflow.region";
pub const HEADER_VERSION: &str = "regionflow.version";
pub const HEADER_OP: &str = "regionflow.op";

/// Turns changes into messages.
pub trait ChangeFormat: Send + Sync + fmt::Debug {
    fn encode(&self, region: &str, change: &Change) -> EncodedChange;
}

/// JSON values, one object per change:
///
/// ```json
/// {"region":"views","entry":"rf:views:u1:1000","key":"u1","window_start":1000,
///  "window_end":2000,"version":3,"op":"upsert","fields":{"count":"2","window_end":"2000",
///  "window_start":"1000"}}
/// ```
///
/// `fields` holds the public fields as strings, exactly as `HGETALL` shows
/// them. A deletion is a tombstone (no value), so a compacted topic drops
/// the entry; its headers still say region, version and operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonChanges;

#[derive(Serialize)]
struct JsonChange<'a> {
    region: &'a str,
    entry: &'a str,
    key: &'a str,
    window_start: Millis,
    window_end: Millis,
    version: u64,
    op: ChangeOp,
    fields: JsonFields<'a>,
}

struct JsonFields<'a>(&'a [(String, String)]);

impl Serialize for JsonFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl JsonChanges {
    /// The JSON object of a change (a deletion's too, for standard output).
    pub fn to_json(&self, region: &str, change: &Change) -> String {
        serde_json::to_string(&JsonChange {
            region,
            entry: &change.entry,
            key: &change.key,
            window_start: change.window_start,
            window_end: change.window_end,
            version: change.version,
            op: change.op,
            fields: JsonFields(&change.fields),
        })
        .expect("a change serializes")
    }
}

impl ChangeFormat for JsonChanges {
    fn encode(&self, region: &str, change: &Change) -> EncodedChange {
        let value = match change.op {
            ChangeOp::Upsert => Some(self.to_json(region, change).into_bytes()),
            ChangeOp::Delete => None,
        };
        EncodedChange {
            key: change.entry.as_bytes().to_vec(),
            value,
            headers: vec![
                (HEADER_REGION, region.to_string()),
                (HEADER_VERSION, change.version.to_string()),
                (HEADER_OP, change.op.as_str().to_string()),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: ChangeOp) -> Change {
        Change {
            entry: "rf:views:u\"1:1000".into(),
            key: "u\"1".into(),
            window_start: 1000,
            window_end: 2000,
            version: 3,
            op,
            fields: vec![("window_start".into(), "1000".into()), ("n".into(), "2".into())],
        }
    }

    #[test]
    fn an_upsert_is_a_json_object_keyed_by_the_entry() {
        let encoded = JsonChanges.encode("views", &change(ChangeOp::Upsert));
        assert_eq!(encoded.key, b"rf:views:u\"1:1000");
        let value: serde_json::Value = serde_json::from_slice(&encoded.value.unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "region": "views", "entry": "rf:views:u\"1:1000", "key": "u\"1",
                "window_start": 1000, "window_end": 2000, "version": 3, "op": "upsert",
                "fields": {"window_start": "1000", "n": "2"},
            })
        );
        assert!(encoded.headers.contains(&(HEADER_VERSION, "3".into())));
    }

    #[test]
    fn a_delete_is_a_tombstone_whose_headers_say_what_it_is() {
        let encoded = JsonChanges.encode("views", &change(ChangeOp::Delete));
        assert_eq!(encoded.value, None);
        assert_eq!(
            encoded.headers,
            vec![(HEADER_REGION, "views".into()), (HEADER_VERSION, "3".into()), (HEADER_OP, "delete".into())]
        );
    }
}
