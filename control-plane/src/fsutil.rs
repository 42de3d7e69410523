//! Small filesystem helpers for files that hold secrets.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;

use crate::error::{Error, Result};

/// Creates a directory (and parents) readable only by the owner; an existing one is left as is.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))
}
