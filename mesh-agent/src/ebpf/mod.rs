//! The eBPF side of the agent: the embedded object, loading/attaching/pinning it (with adoption of
//! what an earlier agent pinned), and typed access to the maps.
mod datapath;
pub mod netns;
pub mod pins;

pub use datapath::{
    AttachReport, Datapath, EbpfError, Enrolment, OBJECT, OrigDstTable,
    read_stats as datapath_stats,
};
