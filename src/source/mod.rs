//! Where records come from: the Kafka consumer, decoding into events, and
//! the dead-letter topic for records that cannot be processed.

pub mod dead_letter;
pub mod decode;
pub mod kafka;
