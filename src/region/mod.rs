mod entry;

pub use entry::{partial_field, KeyTemplate};
