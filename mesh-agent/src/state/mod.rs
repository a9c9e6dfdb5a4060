//! Pure state and decisions: the workloads this node runs and which of them to enrol. No I/O here;
//! table tests cover the decisions.
pub mod enrolment;
pub mod mesh;
pub mod workload;
