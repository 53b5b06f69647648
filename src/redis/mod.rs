//! Everything about Redis: the cluster connection a connector shares
//! ([`ClusterHandle`]), slots, typed errors, the merge function and
//! `merge.lua`, the partial encoding, the region writer ([`RedisRegion`])
//! and the checkpoint store ([`RedisCheckpointStore`]).
//!
//! Regions and checkpoints share one [`ClusterHandle`], so that a
//! checkpoint's `WAIT` covers the region writes made before it.

pub mod checkpoint;
mod cluster;
pub mod error;
pub mod function;
pub mod partial;
pub mod read;
mod region;
pub mod replication;
mod slots;

pub use checkpoint::RedisCheckpointStore;
pub use cluster::{ClusterHandle, ConnectError, Failed};
pub use function::merge_call;
pub use region::{claim, owner_key, RedisRegion};
pub use slots::key_slot;
