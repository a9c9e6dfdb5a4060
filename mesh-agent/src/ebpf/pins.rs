//! The pin layout under `/sys/fs/bpf/weft/<node>/` (bpffs refuses names containing '.').
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The default for a node.
    pub fn for_node(node: &str) -> Self {
        Self::new(Path::new("/sys/fs/bpf/weft").join(node))
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.links().join(name)
    }
    /// The sk_lookup link of one pod netns.
    pub fn sk_lookup_link(&self, pod_uid: &str) -> PathBuf {
        self.links()
            .join(format!("sklookup-{}", pod_uid.replace('.', "_")))
    }
    pub fn exists(&self) -> bool {
        self.maps().exists()
    }
}
