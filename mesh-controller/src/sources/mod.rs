//! Config sources. Each produces a [`crate::model::Model`]; nothing downstream knows which one.
pub mod files;
pub mod kube;
