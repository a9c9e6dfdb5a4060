#![no_std]
// Empty on purpose: mesh-agent build-depends on this crate so cargo rebuilds the eBPF object when
// its sources change. The programs live in main.rs and its modules.
