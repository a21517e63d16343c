//! Cgroups for a container: where its processes go on the host, and the
//! `/sys/fs/cgroup` its systemd sees.
//!
//! The launcher runs as the main process of a unit with `Delegate=yes`, so
//! it owns its unit's cgroup subtree. As systemd-nspawn does, it splits it:
//! `payload/` for the container (the root of the container's cgroup
//! namespace, owned by the container's root user so its systemd can manage
//! it) and `supervisor/` for itself, in every hierarchy systemd tracks
//! processes with (the unified one and, on hybrid or legacy hosts, the named
//! `name=systemd` v1 one). Its own cgroup then has no processes, as cgroup v2
//! requires of inner nodes, and the host's and the container's systemd never
//! both manage the same cgroup's attributes.
//!
//! Inside, the container gets the host's layout, as nspawn gives it:
//! - unified host: cgroup2 at `/sys/fs/cgroup`;
//! - hybrid host (the testbed): a tmpfs at `/sys/fs/cgroup` holding each v1
//!   controller hierarchy read-only, cgroup2 at `unified/` and `name=systemd`
//!   at `systemd/` writable, then the tmpfs made read-only;
//! - legacy host: the same without `unified/`.
//!
//! All are mounted inside the container's cgroup namespace, so they show the
//! payload cgroup as their root.

use std::path::{Path, PathBuf};

/// How cgroups are mounted on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Unified,
    Hybrid,
    Legacy,
}

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Comma-separated controllers, `name=...` for named hierarchies, empty for cgroup2.
    pub controllers: String,
    pub path: String,
}

/// Parses `/proc/PID/cgroup` text.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Membership { controllers: controllers.to_string(), path: path.to_string() })
        })
        .collect()
}

/// The host's cgroups as the launcher finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroups {
    pub layout: Layout,
    /// The launcher's cgroup in the unified hierarchy, if any.
    pub unified: Option<String>,
    /// The launcher's cgroup in the `name=systemd` hierarchy, if any.
    pub named: Option<String>,
    /// The v1 controller hierarchies, as mounted (`cpu`, `cpu,cpuacct`, ...).
    pub controllers: Vec<String>,
}

const ROOT: &str = "/sys/fs/cgroup";
const NAMED: &str = "name=systemd";

impl HostCgroups {
    /// What `layout` and the launcher's `/proc/self/cgroup` text say.
    pub fn from_parts(layout: Layout, proc_cgroup: &str) -> HostCgroups {
        let mut host = HostCgroups { layout, unified: None, named: None, controllers: Vec::new() };
        for member in parse_proc_cgroup(proc_cgroup) {
            match member.controllers.as_str() {
                "" if layout != Layout::Legacy => host.unified = Some(member.path),
                NAMED if layout != Layout::Unified => host.named = Some(member.path),
                "" | NAMED => {}
                other if layout != Layout::Unified && !other.starts_with("name=") => {
                    host.controllers.push(other.to_string())
                }
                _ => {}
            }
        }
        host
    }

    /// Looks at `/sys/fs/cgroup` and `/proc/self/cgroup`.
    pub fn detect() -> std::io::Result<HostCgroups> {
        use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
        let is_cgroup2 = |path: &str| statfs(path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
        let layout = if is_cgroup2(ROOT) {
            Layout::Unified
        } else if is_cgroup2(&format!("{ROOT}/unified")) {
            Layout::Hybrid
        } else {
            Layout::Legacy
        };
        Ok(HostCgroups::from_parts(layout, &std::fs::read_to_string("/proc/self/cgroup")?))
    }

    /// The launcher's own cgroup directory in each hierarchy systemd tracks
    /// processes with.
    pub fn tracking_dirs(&self) -> Vec<PathBuf> {
        let join = |mount: &str, path: &str| Path::new(mount).join(path.trim_start_matches('/'));
        let mut dirs = Vec::new();
        if let Some(path) = &self.unified {
            let mount = if self.layout == Layout::Unified { ROOT.to_string() } else { format!("{ROOT}/unified") };
            dirs.push(join(&mount, path));
        }
        if let Some(path) = &self.named {
            dirs.push(join(&format!("{ROOT}/systemd"), path));
        }
        dirs
    }

    /// The mounts that give the container this layout, in order.
    pub fn container_mounts(&self) -> Vec<CgroupMount> {
        let target = |sub: &str| format!("{ROOT}/{sub}");
        if self.layout == Layout::Unified {
            return vec![CgroupMount::Cgroup2 { target: ROOT.into() }];
        }
        let mut mounts = vec![CgroupMount::Tmpfs { target: ROOT.into() }];
        for controllers in &self.controllers {
            mounts.push(CgroupMount::Cgroup1 {
                target: target(controllers),
                options: controllers.clone(),
                writable: false,
            });
            // A joined hierarchy ("cpu,cpuacct") is also reachable by each name.
            if controllers.contains(',') {
                for single in controllers.split(',') {
                    mounts.push(CgroupMount::Symlink { target: controllers.clone(), link: target(single) });
                }
            }
        }
        if self.layout == Layout::Hybrid {
            mounts.push(CgroupMount::Cgroup2 { target: target("unified") });
        }
        mounts.push(CgroupMount::Cgroup1 {
            target: target("systemd"),
            options: format!("none,{NAMED}"),
            writable: true,
        });
        mounts.push(CgroupMount::ReadOnly { target: ROOT.into() });
        mounts
    }
}

/// A step of the container's `/sys/fs/cgroup` setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMount {
    Tmpfs { target: String },
    Cgroup1 { target: String, options: String, writable: bool },
    Cgroup2 { target: String },
    Symlink { target: String, link: String },
    ReadOnly { target: String },
}

/// Files of a cgroup directory that its owner must be able to write to
/// manage it (those that exist in the hierarchy at hand).
const DELEGATED_FILES: &[&str] = &[
    ".",
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "tasks",
    "notify_on_release",
    "cgroup.clone_children",
];

/// Why the cgroups could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {}: {what}: {source}", .path.display())]
pub struct CgroupError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn fail(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { path, what, source }
}

/// Makes `payload/` and `supervisor/` in each tracking hierarchy, moves the
/// launcher into `supervisor/`, and gives `payload/` to `owner` (the
/// container's root on the host). Returns the payload directories, which
/// the container's first process joins.
pub fn split(host: &HostCgroups, owner: Option<u32>) -> Result<Vec<PathBuf>, CgroupError> {
    let mut payloads = Vec::new();
    for dir in host.tracking_dirs() {
        let payload = dir.join("payload");
        let supervisor = dir.join("supervisor");
        for sub in [&payload, &supervisor] {
            match std::fs::create_dir(sub) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(fail(sub, "creating")(e)),
                _ => {}
            }
        }
        join(&supervisor)?;
        if let Some(owner) = owner {
            for file in DELEGATED_FILES {
                let path = payload.join(file);
                match std::os::unix::fs::chown(&path, Some(owner), Some(owner)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other.map_err(fail(&path, "giving it to the container's root"))?,
                }
            }
        }
        payloads.push(payload);
    }
    Ok(payloads)
}

/// Moves the calling process into the cgroup directory `dir`.
pub fn join(dir: &Path) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, b"0").map_err(fail(&procs, "moving into it"))
}

/// Where a process of `machine shell` goes in one hierarchy, so that the
/// machine's limits hold for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCgroup {
    /// The cgroup directory it joins.
    pub dir: PathBuf,
    /// A cgroup of the shell's own, made before and removed after: in the
    /// hierarchies systemd tracks processes with, where the machine's unit
    /// has a delegated subtree whose inner nodes hold no process.
    pub own: bool,
}

/// Why a shell cannot be placed in its machine's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum ShellCgroupError {
    #[error("'{0}' is not a cgroup path")]
    BadPath(String),
    #[error("the machine's init is in {init}, not below its unit's cgroup {unit}")]
    Outside { init: String, unit: String },
    #[error("the machine's init is listed twice in the cgroup hierarchy '{0}'")]
    Twice(String),
}

/// True if `path` is `base` or below it.
fn at_or_below(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/')) || base.is_empty()
}

/// The cgroups a shell of a machine joins: `leader` is the machine init's
/// `/proc/PID/cgroup` text, `unit` the cgroup of the machine's unit
/// (systemd's `ControlGroup`), `leaf` the name of the shell's own cgroup.
///
/// In the hierarchies systemd tracks processes with (cgroup2, and
/// `name=systemd` on hybrid and legacy hosts) the shell gets `UNIT/LEAF`, a
/// sibling of the launcher's `payload/` and `supervisor/`: below the unit,
/// so every limit of the unit counts it, but outside the container's own
/// subtree (which its systemd manages) and never a process in an inner
/// node, which cgroup2 forbids once controllers are enabled below it. In a
/// v1 controller hierarchy (the `pids` and `memory` of a hybrid host) the
/// container's processes are in the unit's cgroup itself, read-only for the
/// container, and the shell joins that cgroup (or wherever the init is, if
/// the unit has none there).
pub fn shell_cgroups(
    layout: Layout,
    leader: &str,
    unit: &str,
    leaf: &str,
) -> Result<Vec<ShellCgroup>, ShellCgroupError> {
    let clean =
        |path: &str| path.starts_with('/') && !path.split('/').any(|c| c == ".." || c == ".") && !path.contains('\n');
    if !clean(unit) {
        return Err(ShellCgroupError::BadPath(unit.to_string()));
    }
    if leaf.is_empty() || leaf.contains('/') || leaf.starts_with('.') {
        return Err(ShellCgroupError::BadPath(leaf.to_string()));
    }
    let join = |mount: &str, path: &str| match path.trim_start_matches('/') {
        "" => PathBuf::from(mount),
        below => Path::new(mount).join(below),
    };
    let mut cgroups = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for member in parse_proc_cgroup(leader) {
        if !clean(&member.path) {
            return Err(ShellCgroupError::BadPath(member.path));
        }
        // The container names the cgroups below its own: a line made up in
        // such a name (were the kernel to allow a newline in it) must not
        // put the shell elsewhere.
        if !seen.insert(member.controllers.clone()) {
            return Err(ShellCgroupError::Twice(member.controllers));
        }
        let tracking_mount = match member.controllers.as_str() {
            "" if layout == Layout::Unified => Some(ROOT.to_string()),
            "" if layout == Layout::Hybrid => Some(format!("{ROOT}/unified")),
            NAMED if layout != Layout::Unified => Some(format!("{ROOT}/systemd")),
            "" | NAMED => continue,
            other if other.starts_with("name=") || layout == Layout::Unified => continue,
            _ => None,
        };
        let below = at_or_below(&member.path, unit);
        match tracking_mount {
            Some(mount) => {
                if !below {
                    return Err(ShellCgroupError::Outside { init: member.path, unit: unit.to_string() });
                }
                let dir = join(&mount, unit).join(leaf);
                cgroups.push(ShellCgroup { dir, own: true });
            }
            None => {
                let mount = format!("{ROOT}/{}", member.controllers);
                let path = if below { unit } else { member.path.as_str() };
                cgroups.push(ShellCgroup { dir: join(&mount, path), own: false });
            }
        }
    }
    Ok(cgroups)
}

/// Makes the shell's own cgroups; an existing one is an error (a name is
/// never used twice), and what was made before it is removed again.
pub fn make_shell_cgroups(cgroups: &[ShellCgroup]) -> Result<(), CgroupError> {
    let own: Vec<&ShellCgroup> = cgroups.iter().filter(|c| c.own).collect();
    for (made, cgroup) in own.iter().enumerate() {
        if let Err(e) = std::fs::create_dir(&cgroup.dir) {
            for earlier in &own[..made] {
                let _ = std::fs::remove_dir(&earlier.dir);
            }
            return Err(fail(&cgroup.dir, "creating")(e));
        }
    }
    Ok(())
}

/// Moves the calling process into every one of the shell's cgroups.
pub fn join_shell_cgroups(cgroups: &[ShellCgroup]) -> Result<(), CgroupError> {
    for cgroup in cgroups {
        join(&cgroup.dir)?;
    }
    Ok(())
}

/// Ends every process in the shell's own cgroups and removes them; gone
/// ones are fine. `cgroup.kill` (cgroup2, Linux 5.14) kills them all at
/// once; elsewhere each listed process is sent SIGKILL, again until none
/// is left (one forking meanwhile is listed the next time round). Gives up
/// after `patience`.
pub fn remove_shell_cgroups(cgroups: &[ShellCgroup], patience: std::time::Duration) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + patience;
    for cgroup in cgroups.iter().filter(|c| c.own) {
        let dir = &cgroup.dir;
        if !dir.exists() {
            continue;
        }
        let kill = dir.join("cgroup.kill");
        let killed_at_once = kill.exists() && std::fs::write(&kill, b"1").is_ok();
        loop {
            let procs = dir.join("cgroup.procs");
            let listed = match std::fs::read_to_string(&procs) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(fail(&procs, "listing its processes")(e)),
            };
            let pids: Vec<i32> = listed.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            if !killed_at_once {
                for pid in pids {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(fail(dir, "ending its processes")(std::io::Error::from(std::io::ErrorKind::TimedOut)));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A cgroup whose last process just exited is removable once the
        // kernel has let go of it: EBUSY for a moment.
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => return Err(fail(dir, "removing")(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "9:name=systemd:/machine.slice/wharf-f28.service\n8:pids:/\n2:cpu,cpuacct:/\n\
                          1:memory:/machine.slice\n0::/machine.slice/wharf-f28.service\n";

    #[test]
    fn reads_a_hybrid_host() {
        let host = HostCgroups::from_parts(Layout::Hybrid, HYBRID);
        assert_eq!(host.unified.as_deref(), Some("/machine.slice/wharf-f28.service"));
        assert_eq!(host.named.as_deref(), Some("/machine.slice/wharf-f28.service"));
        assert_eq!(host.controllers, ["pids", "cpu,cpuacct", "memory"]);
        assert_eq!(
            host.tracking_dirs(),
            [
                PathBuf::from("/sys/fs/cgroup/unified/machine.slice/wharf-f28.service"),
                PathBuf::from("/sys/fs/cgroup/systemd/machine.slice/wharf-f28.service")
            ]
        );
    }

    #[test]
    fn hybrid_container_layout_mirrors_the_host() {
        let mounts = HostCgroups::from_parts(Layout::Hybrid, HYBRID).container_mounts();
        assert_eq!(mounts.first(), Some(&CgroupMount::Tmpfs { target: ROOT.into() }));
        assert!(mounts.contains(&CgroupMount::Cgroup1 {
            target: "/sys/fs/cgroup/cpu,cpuacct".into(),
            options: "cpu,cpuacct".into(),
            writable: false
        }));
        assert!(
            mounts.contains(&CgroupMount::Symlink {
                target: "cpu,cpuacct".into(),
                link: "/sys/fs/cgroup/cpuacct".into()
            })
        );
        assert!(mounts.contains(&CgroupMount::Cgroup2 { target: "/sys/fs/cgroup/unified".into() }));
        assert!(mounts.contains(&CgroupMount::Cgroup1 {
            target: "/sys/fs/cgroup/systemd".into(),
            options: "none,name=systemd".into(),
            writable: true
        }));
        assert_eq!(mounts.last(), Some(&CgroupMount::ReadOnly { target: ROOT.into() }));
    }

    #[test]
    fn unified_host_gives_a_unified_container() {
        let host = HostCgroups::from_parts(Layout::Unified, "0::/machine.slice/x.service\n");
        assert_eq!(host.tracking_dirs(), [PathBuf::from("/sys/fs/cgroup/machine.slice/x.service")]);
        assert_eq!(host.container_mounts(), [CgroupMount::Cgroup2 { target: ROOT.into() }]);
    }

    #[test]
    fn shells_join_their_machine_on_a_hybrid_host() {
        let leader = "9:name=systemd:/machine.slice/wharf-f28.service/payload/init.scope\n8:pids:/machine.slice/wharf-f28.service\n\
                      2:cpu,cpuacct:/\n1:memory:/machine.slice/wharf-f28.service\n\
                      0::/machine.slice/wharf-f28.service/payload/init.scope\n";
        let unit = "/machine.slice/wharf-f28.service";
        let cgroups = shell_cgroups(Layout::Hybrid, leader, unit, "wharf-shell-f28-1-0").unwrap();
        let dirs: Vec<(String, bool)> = cgroups.iter().map(|c| (c.dir.display().to_string(), c.own)).collect();
        assert_eq!(
            dirs,
            [
                ("/sys/fs/cgroup/systemd/machine.slice/wharf-f28.service/wharf-shell-f28-1-0".to_string(), true),
                ("/sys/fs/cgroup/pids/machine.slice/wharf-f28.service".to_string(), false),
                ("/sys/fs/cgroup/cpu,cpuacct".to_string(), false),
                ("/sys/fs/cgroup/memory/machine.slice/wharf-f28.service".to_string(), false),
                ("/sys/fs/cgroup/unified/machine.slice/wharf-f28.service/wharf-shell-f28-1-0".to_string(), true),
            ]
        );
    }

    #[test]
    fn shells_join_their_machine_on_a_unified_host() {
        let leader = "0::/machine.slice/systemd-nspawn@n28.service/payload\n";
        let cgroups = shell_cgroups(Layout::Unified, leader, "/machine.slice/systemd-nspawn@n28.service", "s").unwrap();
        assert_eq!(
            cgroups,
            [ShellCgroup {
                dir: PathBuf::from("/sys/fs/cgroup/machine.slice/systemd-nspawn@n28.service/s"),
                own: true
            }]
        );
        // A machine whose init is in the unit's cgroup itself (no split).
        let flat = shell_cgroups(
            Layout::Unified,
            "0::/machine.slice/machine-x.scope\n",
            "/machine.slice/machine-x.scope",
            "s",
        );
        assert_eq!(flat.unwrap()[0].dir, PathBuf::from("/sys/fs/cgroup/machine.slice/machine-x.scope/s"));
    }

    #[test]
    fn shell_cgroups_refuse_what_is_not_below_the_unit() {
        let leader = "0::/machine.slice/other.service/payload\n";
        assert!(matches!(
            shell_cgroups(Layout::Unified, leader, "/machine.slice/wharf-f28.service", "s"),
            Err(ShellCgroupError::Outside { .. })
        ));
        // A sibling whose name starts alike is not below it.
        let leader = "0::/machine.slice/wharf-f28.service2/payload\n";
        assert!(shell_cgroups(Layout::Unified, leader, "/machine.slice/wharf-f28.service", "s").is_err());
        let forged = "9:name=systemd:/machine.slice/wharf-f28.service/payload/x\n8:pids:/\n\
                      8:pids:/machine.slice/wharf-f28.service\n0::/machine.slice/wharf-f28.service/payload\n";
        assert!(matches!(
            shell_cgroups(Layout::Hybrid, forged, "/machine.slice/wharf-f28.service", "s"),
            Err(ShellCgroupError::Twice(_))
        ));
        let ok = "0::/machine.slice/wharf-f28.service/payload\n";
        for (unit, leaf) in [
            ("machine.slice", "s"),
            ("/a/../b", "s"),
            ("/machine.slice/wharf-f28.service", "../x"),
            ("/machine.slice/wharf-f28.service", ""),
        ] {
            assert!(
                matches!(shell_cgroups(Layout::Unified, ok, unit, leaf), Err(ShellCgroupError::BadPath(_))),
                "{unit} {leaf}"
            );
        }
    }
}
