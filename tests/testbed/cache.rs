//! The cache of things that are slow to make and never change for a given
//! recipe: the debootstrapped testbed root and the sample machine image. Each
//! is a tarball keyed by what went into it, written under a temporary name
//! and renamed when complete, so an interrupted build is never used.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Error, Release, Result, note, run_host};

/// `WHARF_TESTBED_CACHE`, else /var/cache/wharf-testbed.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WHARF_TESTBED_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/wharf-testbed"))
}

/// A short stable hash (FNV-1a) of the parts that define a cached artifact.
pub fn key(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Returns `<cache>/<name>.tar`, calling `build(dir)` to fill a directory
/// to pack when it is not cached yet.
pub fn cached_tree(name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    cached_file(&format!("{name}.tar"), |partial| {
        let staging = cache_dir().join(format!(".build-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let packed = (|| {
            fs::create_dir_all(&staging).map_err(|e| Error(format!("cannot create {}: {e}", staging.display())))?;
            build(&staging)?;
            run_host(
                Command::new("tar").arg("-C").arg(&staging).args(["--numeric-owner", "-cf"]).arg(partial).arg("."),
                &format!("packing {name}"),
            )
            .map(drop)
        })();
        let _ = fs::remove_dir_all(&staging);
        packed
    })
}

/// Returns `<cache>/<name>`, calling `build(partial)` to write it under a
/// temporary name when it is not cached yet.
pub fn cached_file(name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let cache = cache_dir();
    let cached = cache.join(name);
    if cached.is_file() {
        return Ok(cached);
    }
    fs::create_dir_all(&cache).map_err(|e| Error(format!("cannot create the cache {}: {e}", cache.display())))?;
    // Suites running side by side need the same artifacts: one builds it,
    // the others wait and use it.
    let lock_path = cache.join(format!(".{name}.lock"));
    let _building = fs::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|e| Error(format!("cannot lock {}: {e}", lock_path.display())))?;
    if cached.is_file() {
        return Ok(cached);
    }
    let partial = cache.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&partial);
    let result = build(&partial).and_then(|()| {
        fs::rename(&partial, &cached).map_err(|e| Error(format!("cannot store {}: {e}", cached.display())))
    });
    let _ = fs::remove_file(&partial);
    result.map(|()| cached)
}

/// The mirror apt on this machine uses, so debootstrap needs no other network.
pub fn mirror() -> String {
    if let Ok(mirror) = std::env::var("WHARF_TESTBED_MIRROR") {
        return mirror;
    }
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822
        .lines()
        .find_map(|line| line.strip_prefix("URIs:"))
        .and_then(|uris| uris.split_whitespace().next())
        .map(str::to_string);
    let legacy = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_legacy = legacy
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("deb ") && !line.contains("security"))
        .find_map(|line| line.split_whitespace().find(|word| word.starts_with("http")))
        .map(str::to_string);
    from_deb822.or(from_legacy).unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// debootstrap of a minimal Debian with `packages` into `dir`.
pub fn debootstrap(release: &str, packages: &[&str], dir: &Path) -> Result<()> {
    let mirror = mirror();
    note(&format!("debootstrap {release} from {mirror} (first run only, about a minute)"));
    let log = dir.with_extension("debootstrap.log");
    let output = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", packages.join(","))])
        .arg(release)
        .arg(dir)
        .arg(&mirror)
        .output()
        .map_err(|e| Error(format!("cannot run debootstrap: {e}")))?;
    if !output.status.success() {
        let _ = fs::write(&log, &output.stdout);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // debootstrap says why on an "E:" line; without one, it could not download.
        let reason = stdout
            .lines()
            .chain(stderr.lines())
            .find_map(|line| line.strip_prefix("E: "))
            .map(str::to_string)
            .unwrap_or_else(|| format!("is the mirror reachable? {}", stderr.trim()));
        return Err(Error(format!("debootstrap {release} from {mirror} failed ({}): {reason}", output.status)));
    }
    Ok(())
}

/// The testbed root for a release, as a tarball.
pub fn root_tarball(release: Release) -> Result<PathBuf> {
    let packages = release.packages();
    let mut parts = vec![release.name(), TESTBED_CUSTOMISATION];
    parts.extend_from_slice(&packages);
    let name = format!("testbed-{}-{}", release.name(), key(&parts));
    cached_tree(&name, |dir| {
        debootstrap(release.name(), &packages, dir)?;
        customise(dir)
    })
}

/// Changes to the debootstrapped root, as a script run on the host with the
/// root as `$1`. Part of the cache key: editing it makes a new root.
const TESTBED_CUSTOMISATION: &str = r#"set -e
r="$1"
chmod 0755 "$r"
# Loading kernel modules is the host's business; in a container it only fails.
ln -sf /dev/null "$r/etc/systemd/system/systemd-modules-load.service"
# A fresh machine ID at each boot.
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"*
"#;

fn customise(dir: &Path) -> Result<()> {
    run_host(
        Command::new("sh").args(["-c", TESTBED_CUSTOMISATION, "customise"]).arg(dir),
        "customising the testbed root",
    )
    .map(drop)
}
