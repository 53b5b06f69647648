//! Subcommands of the `regionflow` binary that outgrew `main.rs`. These
//! modules belong to the binary, not the library: they parse arguments,
//! call the library and print; what they compute lives in the library
//! (`region::read`, `redis::read`), where it is tested.

pub mod region;
