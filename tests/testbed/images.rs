//! The sample images of `images/`, built for tests and the demo with the
//! recipes there.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::{cached_tree, key, mirror};
use super::install::repo_dir;
use super::{Result, run_host};

/// Builds the foobar portable image in `format` (squashfs, ext4, erofs,
/// gpt, xz, dir) with `version` into `out`.
pub fn foobar(out: &Path, format: &str, version: &str) -> Result<()> {
    let recipe = repo_dir().join("images/foobar/build");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| super::Error(format!("cannot create {}: {e}", parent.display())))?;
    }
    run_host(
        Command::new(&recipe).arg(out).arg(format).arg(version),
        &format!("building foobar ({format}, version {version}) as {}", out.display()),
    )
    .map(drop)
}

/// The f28 machine image (a minimal Debian with systemd) as a tarball of its
/// tree, built once and cached by the recipe's content.
pub fn f28_tarball() -> Result<PathBuf> {
    let recipe = repo_dir().join("images/f28/build");
    let script = std::fs::read_to_string(&recipe).unwrap_or_default();
    cached_tree(&format!("f28-{}", key(&[&script])), |dir| {
        super::note("building the f28 machine image (first run only, about a minute)");
        run_host(Command::new(&recipe).arg(dir).arg(mirror()), "building the f28 machine image").map(drop)
    })
}
