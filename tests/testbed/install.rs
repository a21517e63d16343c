//! Installing wharf into a testbed root the way a distribution package
//! would: meson-compat's `meson install --destdir` into a staging tree, once
//! per process, and that tree copied into each testbed root. So what the
//! tests exercise is exactly what the packaging installs.
//!
//! meson is pointed at the cargo target directory and profile of the
//! binaries under test (`bin_dir`), so its cargo step finds everything built
//! and costs a no-op `cargo build`; the whole install takes about a second.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use super::{Error, Result};

/// Every file the install puts below the root, with its mode: what the
/// packaging tests check the staged tree against.
pub const EXPECTED: &[(&str, u32)] = &[
    ("usr/bin/portable", 0o755),
    ("usr/bin/machine", 0o755),
    ("usr/lib/wharf/wharfd", 0o755),
    ("usr/lib/systemd/system/wharfd.service", 0o644),
    ("usr/lib/systemd/system/wharf-machine@.service", 0o644),
    ("usr/lib/tmpfiles.d/wharf.conf", 0o644),
    ("usr/share/dbus-1/system.d/org.wharf1.conf", 0o644),
    ("usr/share/dbus-1/system-services/org.wharf1.service", 0o644),
    ("usr/share/dbus-1/interfaces/org.wharf1.xml", 0o644),
    ("usr/share/polkit-1/actions/org.wharf1.policy", 0o644),
    ("usr/lib/wharf/profiles/default/service.conf", 0o644),
    ("usr/lib/wharf/profiles/nonetwork/service.conf", 0o644),
    ("usr/lib/wharf/profiles/strict/service.conf", 0o644),
    ("usr/lib/wharf/profiles/trusted/service.conf", 0o644),
    ("usr/share/man/man1/portable.1", 0o644),
    ("usr/share/man/man1/machine.1", 0o644),
    ("usr/share/man/man8/wharfd.8", 0o644),
    ("usr/share/man/man7/wharf-profiles.7", 0o644),
    ("usr/share/man/man5/wharf-machine.toml.5", 0o644),
    ("usr/share/man/man5/wharf-fleet.5", 0o644),
    ("usr/share/bash-completion/completions/portable", 0o644),
    ("usr/share/bash-completion/completions/machine", 0o644),
    ("usr/share/zsh/site-functions/_portable", 0o644),
    ("usr/share/zsh/site-functions/_machine", 0o644),
    ("usr/share/fish/vendor_completions.d/portable.fish", 0o644),
    ("usr/share/fish/vendor_completions.d/machine.fish", 0o644),
];

/// The repository checkout the tests were built from.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs wharf, as built in `bin_dir`, into the testbed root `root`.
pub fn install_wharf(bin_dir: &Path, root: &Path) -> Result<()> {
    let stage = staged_tree(bin_dir)?;
    copy_tree(&stage, root)
}

/// The tree `meson install` made for the binaries in `bin_dir`, staged on
/// first use in this process.
pub fn staged_tree(bin_dir: &Path) -> Result<PathBuf> {
    static STAGED: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut staged = STAGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, stage)) = staged.iter().find(|(dir, _)| dir == bin_dir) {
        return Ok(stage.clone());
    }
    let started = Instant::now();
    let stage = meson_install(bin_dir)?;
    super::note(&format!("staged the meson-compat install in {:.1} s", started.elapsed().as_secs_f64()));
    staged.push((bin_dir.to_path_buf(), stage.clone()));
    Ok(stage)
}

/// Cargo's name for the profile whose binaries are in `bin_dir`
/// (`target/debug` holds the `dev` profile's), and the target directory.
fn cargo_profile(bin_dir: &Path) -> Result<(String, PathBuf)> {
    let unknown = || Error(format!("cannot tell the cargo profile and target directory of {}", bin_dir.display()));
    let dir = bin_dir.file_name().and_then(|n| n.to_str()).ok_or_else(unknown)?;
    let target = bin_dir.parent().ok_or_else(unknown)?;
    let profile = if dir == "debug" { "dev" } else { dir };
    Ok((profile.to_string(), target.to_path_buf()))
}

/// Runs meson setup (once per target directory and profile), compile and
/// install into a staging directory of this process. Returns the staging
/// directory.
fn meson_install(bin_dir: &Path) -> Result<PathBuf> {
    let (profile, target) = cargo_profile(bin_dir)?;
    let base = target.join("meson-compat");
    fs::create_dir_all(&base).map_err(|e| Error(format!("cannot create {}: {e}", base.display())))?;
    // Concurrent runs (tests and a benchmark) share the build directory.
    let lock = fs::File::create(base.join(format!("{profile}.lock")))
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|e| Error(format!("cannot lock {}: {e}", base.display())))?;
    let build = base.join(&profile);
    let stage = base.join(format!("{profile}-stage.{}", std::process::id()));
    remove_dead_stages(&base, &profile);

    // cargo as the one running these tests (CARGO), not whichever is first in PATH.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let options = [
        format!("-Dcargo={cargo}"),
        format!("-Dcargo_profile={profile}"),
        format!("-Dcargo_target_dir={}", target.display()),
        // Where the testbed's Debian has them, whatever the host's systemd.pc says.
        "-Dsystemdsystemunitdir=/usr/lib/systemd/system".to_string(),
        "-Dtmpfilesdir=/usr/lib/tmpfiles.d".to_string(),
    ];
    if build.join("build.ninja").exists() {
        // The options again: this run's cargo may not be the last one's.
        meson(Command::new("meson").arg("configure").arg(&build).args(&options), "meson configure")?;
    } else {
        // A setup that failed half-way leaves a directory meson refuses.
        let _ = fs::remove_dir_all(&build);
        let source = repo_dir().join("meson-compat");
        meson(Command::new("meson").arg("setup").arg(&build).arg(source).args(&options), "meson setup")?;
    }
    meson(Command::new("meson").arg("compile").arg("-C").arg(&build), "meson compile")?;
    let _ = fs::remove_dir_all(&stage);
    meson(
        Command::new("meson")
            .args(["install", "--quiet", "--no-rebuild", "-C"])
            .arg(&build)
            .arg("--destdir")
            .arg(&stage),
        "meson install",
    )?;
    drop(lock);
    Ok(stage)
}

/// Runs a meson command; a failure says what meson and ninja printed (a
/// failing build step is reported on standard output).
fn meson(command: &mut Command, what: &str) -> Result<()> {
    if !which("meson") {
        return Err(Error(format!("{what}: meson is missing: install the Debian packages 'meson' and 'ninja-build'")));
    }
    let output = command.output().map_err(|e| Error(format!("{what}: cannot run {command:?}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error(format!(
        "{what}: {command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

fn which(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|dir| dir.join(tool).is_file())
}

/// Staging trees of processes that have exited.
fn remove_dead_stages(base: &Path, profile: &str) {
    let prefix = format!("{profile}-stage.");
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the staged tree into `root`, merging with the directories there
/// (following the root's symlinks, such as `lib -> usr/lib`), files with
/// their modes.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let fail = |path: &Path, e: std::io::Error| Error(format!("installing {}: {e}", path.display()));
    for entry in fs::read_dir(from).map_err(|e| fail(from, e))? {
        let entry = entry.map_err(|e| fail(from, e))?;
        let source = entry.path();
        let dest = to.join(entry.file_name());
        let meta = entry.metadata().map_err(|e| fail(&source, e))?;
        if meta.is_dir() {
            if !dest.is_dir() {
                fs::create_dir(&dest).map_err(|e| fail(&dest, e))?;
                fs::set_permissions(&dest, meta.permissions()).map_err(|e| fail(&dest, e))?;
            }
            copy_tree(&source, &dest)?;
        } else if meta.is_file() {
            fs::copy(&source, &dest).map_err(|e| fail(&dest, e))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
                .map_err(|e| fail(&dest, e))?;
        } else {
            return Err(Error(format!(
                "{}: the install made something other than a file or directory",
                source.display()
            )));
        }
    }
    Ok(())
}
