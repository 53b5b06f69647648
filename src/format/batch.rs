//! A batch of one partition's records in one buffer.
//!
//! The dispatch loop copies each message's key and payload out of
//! librdkafka's buffer exactly once, appending them to the batch's byte
//! buffer, instead of allocating two vectors per record (and freeing them
//! again once decoded); the partition task reads the records as
//! [`RecordRef`]s borrowed from the batch.

use super::{RecordRef, SourceRecord};
use crate::time::Millis;

#[derive(Debug, Default)]
pub struct RecordBatch {
    bytes: Vec<u8>,
    records: Vec<Stored>,
}

/// A record's place in the buffer: its key, then its payload, from `start`.
#[derive(Debug, Clone, Copy)]
struct Stored {
    offset: i64,
    timestamp: Option<Millis>,
    start: usize,
    key: Option<u32>,
    payload: Option<u32>,
}

impl RecordBatch {
    pub fn push(&mut self, offset: i64, timestamp: Option<Millis>, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let start = self.bytes.len();
        let mut append = |part: Option<&[u8]>| {
            part.map(|part| {
                self.bytes.extend_from_slice(part);
                // A Kafka record is at most 2 GiB (its size is an int32).
                u32::try_from(part.len()).expect("a Kafka record's part is smaller than 4 GiB")
            })
        };
        let key = append(key);
        let payload = append(payload);
        self.records.push(Stored { offset, timestamp, start, key, payload });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Key and payload bytes of all records.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> {
        self.records.iter().map(|stored| {
            let key_len = stored.key.map_or(0, |len| len as usize);
            let payload_start = stored.start + key_len;
            RecordRef {
                offset: stored.offset,
                timestamp: stored.timestamp,
                key: stored.key.map(|_| &self.bytes[stored.start..payload_start]),
                payload: stored.payload.map(|len| &self.bytes[payload_start..payload_start + len as usize]),
            }
        })
    }
}

impl<'a> FromIterator<RecordRef<'a>> for RecordBatch {
    fn from_iter<I: IntoIterator<Item = RecordRef<'a>>>(records: I) -> Self {
        let mut batch = RecordBatch::default();
        for r in records {
            batch.push(r.offset, r.timestamp, r.key, r.payload);
        }
        batch
    }
}

impl From<Vec<SourceRecord>> for RecordBatch {
    fn from(records: Vec<SourceRecord>) -> Self {
        records.iter().map(SourceRecord::view).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_each_record_as_it_was_pushed() {
        let records = vec![
            SourceRecord { offset: 7, timestamp: Some(-1), key: Some(b"k".to_vec()), payload: Some(b"{}".to_vec()) },
            SourceRecord { offset: 8, timestamp: None, key: None, payload: Some(b"x".to_vec()) },
            SourceRecord { offset: 9, timestamp: Some(i64::MAX), key: Some(Vec::new()), payload: None },
            SourceRecord { offset: 10, timestamp: None, key: None, payload: None },
            SourceRecord { offset: 11, timestamp: None, key: Some(b"\xff\x00".to_vec()), payload: Some(Vec::new()) },
        ];
        let batch: RecordBatch = records.iter().map(SourceRecord::view).collect();
        assert_eq!(batch.len(), records.len());
        assert_eq!(batch.bytes(), records.iter().map(SourceRecord::size).sum::<usize>());
        let back: Vec<SourceRecord> = batch.iter().map(|r| r.to_record()).collect();
        assert_eq!(back, records, "an empty key or payload stays empty, a missing one missing");
    }
}
