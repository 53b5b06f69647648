//! Which primary owns a key: Redis Cluster's hash slots.
//!
//! The region writer groups a batch by the primary that owns each entry's
//! key, to send one pipeline per node (see `redis.rs`). redis-rs keeps its
//! own slot map private, so this is a second, read-only copy taken from one
//! `CLUSTER SLOTS` reply and held by [`ClusterHandle`]. A stale copy costs
//! a redirect or a connection error on one pipeline, after which the writer
//! forgets it and sends those writes one by one, routed by redis-rs.
//!
//! [`ClusterHandle`]: super::ClusterHandle

use redis::Value;

/// How many hash slots a Redis Cluster has.
pub const SLOTS: u16 = 16384;

/// `primary` of a slot that no reachable primary is known to serve.
const UNKNOWN: u16 = u16::MAX;

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`, when not empty).
pub fn key_slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let inner = &key[open + 1..];
        let close = inner.iter().position(|&b| b == b'}')?;
        Some(&inner[..close]).filter(|tag| !tag.is_empty())
    });
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with (the crate
/// redis-rs itself uses; it keeps its slot function private).
fn crc16(data: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(data)
}

/// The primary of every slot, as one `CLUSTER SLOTS` reply gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// `(host, port)` of each primary, as redis-rs' cluster connection names
    /// its nodes (both read `CLUSTER SLOTS`).
    primaries: Vec<(String, u16)>,
    /// Index into `primaries` per slot, or [`UNKNOWN`].
    primary: Box<[u16]>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply. Ranges whose primary has no usable
    /// address (an empty or `?` host, which only makes sense relative to the
    /// node that answered) stay unknown; `None` when no range is usable.
    pub fn parse(reply: &Value) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else { return None };
        let mut map = SlotMap { primaries: Vec::new(), primary: vec![UNKNOWN; usize::from(SLOTS)].into() };
        for range in ranges {
            let Value::Array(range) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (range.first(), range.get(1), range.get(2))
            else {
                continue;
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) = (node.first(), node.get(1)) else {
                continue;
            };
            let Ok(host) = std::str::from_utf8(host) else { continue };
            let usable = !host.is_empty() && host != "?" && host != "0.0.0.0" && host != "::";
            let (Ok(start), Ok(end), Ok(port)) = (u16::try_from(*start), u16::try_from(*end), u16::try_from(*port))
            else {
                continue;
            };
            if !usable || start > end || end >= SLOTS {
                continue;
            }
            let index = match map.primaries.iter().position(|(h, p)| h == host && *p == port) {
                Some(index) => index,
                None => {
                    map.primaries.push((host.to_string(), port));
                    map.primaries.len() - 1
                }
            };
            map.primary[usize::from(start)..=usize::from(end)].fill(index as u16);
        }
        (!map.primaries.is_empty()).then_some(map)
    }

    /// How many primaries the map knows; [`SlotMap::primary_of`] returns
    /// indices below this.
    pub fn primaries(&self) -> usize {
        self.primaries.len()
    }

    /// The index of the primary that owns `key`, if known.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        self.primary_of_slot(key_slot(key.as_bytes()))
    }

    /// The index of the primary that owns `slot`, if known.
    pub fn primary_of_slot(&self, slot: u16) -> Option<usize> {
        let index = *self.primary.get(usize::from(slot))?;
        (index != UNKNOWN).then_some(usize::from(index))
    }

    /// Host and port of primary `index`.
    pub fn address(&self, index: usize) -> (&str, u16) {
        let (host, port) = &self.primaries[index];
        (host, *port)
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    use super::*;

    #[test]
    fn slots_match_redis() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn slots_match_redis_rs() {
        for key in ["", "a", "rf:views:u48213:1700000010000", "{", "}{", "x{}", "x{y}z", "{{a}}", "é{ü}"] {
            assert_eq!(
                Route::with_key(key, SlotAddr::Master),
                Route::new(key_slot(key.as_bytes()), SlotAddr::Master),
                "{key}"
            );
        }
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        let node = |host: &str, port| Value::Array(vec![Value::BulkString(host.into()), Value::Int(port)]);
        Value::Array(vec![Value::Int(start), Value::Int(end), node(host, port), node("10.0.0.9", 7000)])
    }

    #[test]
    fn parses_cluster_slots() {
        let reply = Value::Array(vec![
            range(0, 5460, "127.0.0.1", 7001),
            range(5461, 10922, "127.0.0.1", 7002),
            range(10923, 16383, "", 7003),
        ]);
        let map = SlotMap::parse(&reply).expect("usable");
        assert_eq!(map.primaries(), 2);
        let low = (0..).map(|i| format!("k{i}")).find(|k| key_slot(k.as_bytes()) <= 5460).expect("a key");
        assert_eq!(map.primary_of(&low).map(|i| map.address(i)), Some(("127.0.0.1", 7001)));
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(map.primary_of("foo"), None, "no address for the third range");
        assert_eq!(SlotMap::parse(&Value::Array(vec![])), None);
        assert_eq!(SlotMap::parse(&Value::Nil), None);
    }
}
