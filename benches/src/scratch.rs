//! Scratch directories for the scenarios that write journals.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// A fresh directory under `root` for one case (any left over from an earlier run removed
/// first), removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(root: &Path, name: &str) -> Result<Self> {
        let path = root.join(format!("keel-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
