//! The sample images of `images/`, built for tests and the demo with the
//! recipes there.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::{cached_file, cached_tree, key, mirror};
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

/// Packs the tree at `tree` into a squashfs image at `out`, files owned
/// by root, as the test images are shipped.
pub fn squashfs(tree: &Path, out: &Path) -> Result<()> {
    run_host(
        Command::new("mksquashfs").arg(tree).arg(out).args(["-noappend", "-quiet", "-all-root", "-no-progress"]),
        &format!("packing {} as squashfs", tree.display()),
    )
    .map(drop)
}

/// The foobar tree as a directory image of another service, `name`: the
/// unit `keep` of foobar becomes `name.service`, its other units are
/// dropped, and os-release allows the prefix `name`.
pub fn foobar_as(out: &Path, name: &str, keep: &str) -> Result<()> {
    foobar(out, "dir", "1")?;
    fn io(what: &Path) -> impl FnOnce(std::io::Error) -> super::Error + '_ {
        move |e| super::Error(format!("{}: {e}", what.display()))
    }
    let units = out.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir(&units).map_err(io(&units))? {
        let path = entry.map_err(io(&units))?.path();
        if path.file_name().is_some_and(|n| n == keep) {
            std::fs::rename(&path, units.join(format!("{name}.service"))).map_err(io(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    let os = out.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&os).map_err(io(&os))?;
    std::fs::write(&os, text.replace("PORTABLE_PREFIXES=foobar", &format!("PORTABLE_PREFIXES={name}"))).map_err(io(&os))
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

/// The f28 tree as the files a user imports: `.tar.xz` of the tree and
/// `.raw.xz` of a squashfs of it, made once per f28 build (compressing the
/// tree is most of a minute on two cores).
pub fn f28_import_files() -> Result<(PathBuf, PathBuf)> {
    let tarball = f28_tarball()?;
    let stem = tarball.file_stem().and_then(|s| s.to_str()).unwrap_or("f28").to_string();
    let tar_xz = cached_file(&format!("{stem}.tar.xz"), |partial| {
        let script = r#"set -e; xz -T0 -1 -c "$1" > "$2""#;
        run_host(Command::new("sh").args(["-c", script, "sh"]).arg(&tarball).arg(partial), "compressing f28 as .tar.xz")
            .map(drop)
    })?;
    let raw_xz = cached_file(&format!("{stem}-squashfs.raw.xz"), |partial| {
        let script = r#"set -e; tree="$2.tree"; rm -rf "$tree"; mkdir "$tree"; trap 'rm -rf "$tree" "$2.raw"' EXIT
            tar --numeric-owner -C "$tree" -xf "$1"
            mksquashfs "$tree" "$2.raw" -noappend -quiet -no-progress >/dev/null
            xz -T0 -1 -c "$2.raw" > "$2""#;
        run_host(Command::new("sh").args(["-c", script, "sh"]).arg(&tarball).arg(partial), "packing f28 as .raw.xz")
            .map(drop)
    })?;
    Ok((tar_xz, raw_xz))
}
