//! Finding a pod's cgroup and network namespace, and doing socket work inside that namespace.
pub mod locate;
pub mod worker;
