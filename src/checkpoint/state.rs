//! The checkpoint state encoding: a versioned binary envelope around the
//! task's state.
//!
//! Layout: the magic bytes `RFCK`, a little-endian `u16` format version,
//! then the [`TaskState`] in postcard (a compact, stable serde format).
//! Readers refuse other magic bytes and versions with an error that says
//! what to do, instead of misreading state.

use serde::{Deserialize, Serialize};

use crate::time::Millis;
use crate::window::OperatorSnapshot;

const MAGIC: &[u8; 4] = b"RFCK";
/// v1 kept fixed-window state per window; v2 keeps it per pane.
pub const FORMAT_VERSION: u16 = 2;

/// Everything a task needs to continue where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// What the window state means; restoring under another is refused.
    pub fingerprint: String,
    /// The highest event time seen (the watermark's base).
    pub max_seen: Option<Millis>,
    pub operator: OperatorSnapshot,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a regionflow checkpoint (bad magic bytes)")]
    NotACheckpoint,
    #[error(
        "checkpoint format v{found} is not readable by this regionflow (reads v{FORMAT_VERSION}); \
         run the version that wrote it, or reset the pipeline's state with `regionflow checkpoints reset`"
    )]
    UnknownVersion { found: u16 },
    #[error("checkpoint state is corrupt: {0}")]
    Corrupt(String),
}

pub fn encode(state: &TaskState) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    postcard::to_io(state, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub fn decode(bytes: &[u8]) -> Result<TaskState, DecodeError> {
    if bytes.len() < 6 || &bytes[..4] != MAGIC {
        return Err(DecodeError::NotACheckpoint);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    postcard::from_bytes(&bytes[6..]).map_err(|e| DecodeError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{Accumulator, FixedSnapshot, PaneSnapshot};

    fn state() -> TaskState {
        TaskState {
            fingerprint: "f".into(),
            max_seen: Some(42),
            operator: OperatorSnapshot::Fixed(FixedSnapshot {
                fired_through: 7,
                panes: vec![PaneSnapshot {
                    start: 0,
                    keys: vec![("k".into(), vec![Accumulator::Count(2), Accumulator::Max(Some(1.5))])],
                }],
            }),
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&encode(&state())), Ok(state()));
    }

    #[test]
    fn refuses_other_versions_and_garbage_clearly() {
        let mut bytes = encode(&state());
        bytes[4] = 9;
        let error = decode(&bytes).unwrap_err();
        assert_eq!(error, DecodeError::UnknownVersion { found: 9 });
        assert!(error.to_string().contains("regionflow checkpoints reset"));
        assert_eq!(decode(b"hello world"), Err(DecodeError::NotACheckpoint));
        let truncated = &encode(&state())[..12];
        assert!(matches!(decode(truncated), Err(DecodeError::Corrupt(_))));
    }

    /// A checkpoint written before fixed windows moved to panes (v1: one
    /// entry per window) is refused, not misread as panes.
    #[test]
    fn refuses_v1_per_window_state() {
        // v1 bytes of `Fixed([{ start: 0, end: 10, fired: false, keys: [("k", [Count(2)])] }])`.
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&[1, b'f', 1, 84, 0, 1, 0, 20, 0, 1, 1, b'k', 1, 0, 2]);
        assert_eq!(FORMAT_VERSION, 2);
        let error = decode(&v1).unwrap_err();
        assert_eq!(error, DecodeError::UnknownVersion { found: 1 });
        assert!(error.to_string().contains("format v1"), "{error}");
    }
}
