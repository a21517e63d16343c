//! Installing wharf into a testbed root the way a distribution package
//! would: binaries, units, D-Bus files and profiles at their final paths.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// Where each installed file comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A binary built by cargo.
    Bin(&'static str),
    /// A file of the repository.
    Repo(&'static str),
}

/// (source, path below the root, mode).
pub const MANIFEST: &[(Source, &str, u32)] = &[
    (Source::Bin("portable"), "usr/bin/portable", 0o755),
    (Source::Bin("machine"), "usr/bin/machine", 0o755),
    (Source::Bin("wharfd"), "usr/lib/wharf/wharfd", 0o755),
    (Source::Repo("units/wharfd.service"), "usr/lib/systemd/system/wharfd.service", 0o644),
    (Source::Repo("units/wharf-machine@.service"), "usr/lib/systemd/system/wharf-machine@.service", 0o644),
    (Source::Repo("units/wharf.tmpfiles"), "usr/lib/tmpfiles.d/wharf.conf", 0o644),
    (Source::Repo("dbus/org.wharf1.conf"), "usr/share/dbus-1/system.d/org.wharf1.conf", 0o644),
    (Source::Repo("dbus/org.wharf1.service"), "usr/share/dbus-1/system-services/org.wharf1.service", 0o644),
    (Source::Repo("dbus/org.wharf1.xml"), "usr/share/dbus-1/interfaces/org.wharf1.xml", 0o644),
];

/// The repository checkout the tests were built from.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn install_wharf(bin_dir: &Path, root: &Path) -> Result<()> {
    for (source, dest, mode) in MANIFEST {
        let from = match source {
            Source::Bin(name) => bin_dir.join(name),
            Source::Repo(path) => repo_dir().join(path),
        };
        let to = root.join(dest);
        copy(&from, &to, *mode)?;
    }
    let profiles = repo_dir().join("units/profiles");
    {
        for profile in read_dir(&profiles)? {
            for file in read_dir(&profile)? {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                let profile_name = profile.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                copy(&file, &root.join("usr/lib/wharf/profiles").join(profile_name).join(name), 0o644)?;
            }
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let fail = |e: std::io::Error| Error(format!("installing {} as {}: {e}", from.display(), to.display()));
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    fs::copy(from, to).map_err(fail)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(fail)
}
