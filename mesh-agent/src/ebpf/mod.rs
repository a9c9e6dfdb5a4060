//! The eBPF side of the agent: the embedded object and a typed handle over its programs and maps.
mod loader;

pub use loader::{EbpfError, OBJECT, PROGRAM_NAMES, Programs};
