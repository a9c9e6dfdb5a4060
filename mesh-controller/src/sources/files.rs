//! `files` source: a directory of the YAML you would `kubectl apply` (multi-document files),
//! watched for changes. A file that fails to parse is reported (file, document, error) and the last
//! good version of its objects stays in effect.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize as _;
use serde_json::Value;
use tracing::warn;

use crate::model::Model;

#[derive(Debug, Clone, PartialEq)]
pub struct FileProblem {
    pub file: String,
    pub document: usize,
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: document {}: {}",
            self.file, self.document, self.message
        )
    }
}

/// Parses a multi-document YAML text into objects; any bad document fails the whole file (so the
/// last good version of the file stays).
pub fn parse(file: &str, text: &str) -> Result<Vec<Value>, FileProblem> {
    let mut out = vec![];
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(de).map_err(|e| FileProblem {
            file: file.into(),
            document: i + 1,
            message: e.to_string(),
        })?;
        if v.is_null() {
            continue;
        }
        let j: Value = serde_json::to_value(&v).map_err(|e| FileProblem {
            file: file.into(),
            document: i + 1,
            message: e.to_string(),
        })?;
        for (field, ptr) in [("kind", "/kind"), ("metadata.name", "/metadata/name")] {
            if j.pointer(ptr)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(FileProblem {
                    file: file.into(),
                    document: i + 1,
                    message: format!("field `{field}`: Required value"),
                });
            }
        }
        out.push(j);
    }
    Ok(out)
}

/// The watched directory with each file's last good objects.
pub struct FilesSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (SystemTime, Vec<Value>)>,
    pub problems: Vec<FileProblem>,
}

impl FilesSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            problems: vec![],
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads changed files; returns true when the set of objects may have changed.
    pub fn refresh(&mut self) -> std::io::Result<bool> {
        let mut seen = vec![];
        let mut changed = false;
        self.problems.clear();
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden || !matches!(ext, "yaml" | "yml" | "json") {
                continue;
            }
            let Ok(mtime) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            seen.push(p.clone());
            if self.files.get(&p).is_some_and(|(t, _)| *t == mtime) {
                continue;
            }
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            match parse(&p.display().to_string(), &text) {
                Ok(objs) => {
                    self.files.insert(p, (mtime, objs));
                    changed = true;
                }
                Err(problem) => {
                    warn!("{problem}; keeping the last good version of this file");
                    self.problems.push(problem);
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        Ok(changed || before != self.files.len())
    }

    pub fn model(&self) -> Model {
        let mut m = Model::default();
        for (_, objs) in self.files.values() {
            for o in objs {
                m.insert(o.clone());
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_modify_delete_and_broken_files() {
        let dir = std::env::temp_dir().join(format!("weft-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut src = FilesSource::new(&dir);
        assert!(!src.refresh().unwrap());
        let f = dir.join("a.yaml");
        std::fs::write(
            &f,
            "kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: b}\n",
        )
        .unwrap();
        assert!(src.refresh().unwrap());
        assert_eq!(src.model().of("Namespace").count(), 2);
        // A broken version keeps the last good objects and reports file + document.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "kind: Namespace\nmetadata: {name: a}\n---\nkind: [\n").unwrap();
        src.refresh().unwrap();
        assert_eq!(src.model().of("Namespace").count(), 2);
        assert_eq!(src.problems.len(), 1);
        assert_eq!(src.problems[0].document, 2);
        // A missing name is refused too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "kind: Namespace\nmetadata: {}\n").unwrap();
        src.refresh().unwrap();
        assert!(src.problems[0].message.contains("metadata.name"));
        // Modify, then delete.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "kind: Namespace\nmetadata: {name: c}\n").unwrap();
        assert!(src.refresh().unwrap());
        assert_eq!(src.model().of("Namespace").count(), 1);
        std::fs::remove_file(&f).unwrap();
        assert!(src.refresh().unwrap());
        assert_eq!(src.model().of("Namespace").count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
