//! Leaving nothing behind: no container, mount, loop device or work
//! directory, whether the run ends normally, fails, is interrupted, or the
//! harness is killed outright (then the next run reaps what it left).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::{Error, Result, WORK_BASE};

/// On SIGINT, SIGTERM or SIGHUP: power off every testbed, then exit.
pub fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("testbed: cannot catch signals, an interrupted run will be reaped by the next one: {e}");
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("testbed: signal {signal}, powering off");
                super::teardown_all();
                std::process::exit(128 + signal);
            }
        });
    });
}

/// Spawns `command` so that it gets SIGTERM (for nspawn: a clean container
/// shutdown) if this process dies without tearing it down, e.g. when killed
/// with SIGKILL.
///
/// The kernel sends the parent-death signal when the *thread* that forked
/// exits, and tests run on short-lived threads; so the fork happens on one
/// thread that lives as long as the process.
pub fn spawn_dying_with_us(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(requests)
    });
    die_with_parent(&mut command);
    let (reply, result) = mpsc::channel();
    spawner.lock().unwrap().send((command, reply)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    result.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec in the child; it only
    // makes one prctl(2) system call, which is async-signal-safe, and touches
    // no memory shared with the parent.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

/// Records which process owns a work directory, so a later run can tell a
/// live testbed of a concurrent run from one left by a dead harness.
pub fn write_owner(work: &Path) -> Result<()> {
    let me = std::process::id();
    let owner = format!("{me} {}", start_time(me).unwrap_or_default());
    fs::write(work.join("owner"), owner).map_err(|e| Error(format!("cannot write {}: {e}", work.display())))
}

/// A process's start time (clock ticks since boot), to tell a reused PID apart.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19).map(str::to_string)
}

fn owner_alive(work: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(work.join("owner")) else {
        return false;
    };
    let mut parts = owner.split_whitespace();
    let (Some(pid), Some(started)) = (parts.next(), parts.next()) else {
        return false;
    };
    pid.parse().ok().and_then(start_time).as_deref() == Some(started)
}

/// How long a work directory without an owner may be one that a concurrent
/// run has just made and not yet written its owner into.
const CLAIM_WINDOW: Duration = Duration::from_secs(300);

/// A work directory made moments ago with no owner yet: a concurrent run
/// (the other release's suite, starting at the same time) is claiming it.
/// One whose harness died before writing the owner is reaped later.
fn being_claimed(work: &Path) -> bool {
    !work.join("owner").exists()
        && fs::metadata(work)
            .and_then(|m| m.modified())
            .is_ok_and(|made| made.elapsed().is_ok_and(|age| age < CLAIM_WINDOW))
}

/// Tears down testbeds whose harness died without doing so.
pub fn reap_stale_runs() {
    let Ok(entries) = fs::read_dir(WORK_BASE) else {
        return;
    };
    for entry in entries.flatten() {
        let work = entry.path();
        if !work.is_dir() || owner_alive(&work) || being_claimed(&work) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        eprintln!("testbed: reaping {name}, left by a run that did not finish");
        let root = work.join("root");
        for file in ["pid1", "nspawn.pid"] {
            let Some(pid) = fs::read_to_string(work.join(file)).ok().and_then(|p| p.trim().parse::<u32>().ok()) else {
                continue;
            };
            if process_belongs_to(pid, &root) {
                signal(pid, 9);
            }
        }
        wait_gone(&root);
        if let Err(e) = remove_work_dir(&work, &name) {
            eprintln!("{e}");
        }
        remove_cgroups(&name);
    }
}

/// Whether `pid` is the nspawn of this root or the init inside it.
fn process_belongs_to(pid: u32, root: &Path) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains(&*root.to_string_lossy()) {
        return true;
    }
    // The container's init: its root directory is the testbed root.
    fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root)
}

fn wait_gone(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && all_pids().iter().any(|pid| process_belongs_to(*pid, root)) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Direct children of a process.
pub fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|stat| {
                let after = stat[stat.rfind(')')? + 2..].to_string();
                after.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect()
}

pub fn signal(pid: u32, signal: i32) {
    // SIGRTMIN+N has no nix::Signal variant, so go through the raw number.
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mount_path(field: &str) -> PathBuf {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Loop devices whose backing file lies below `dir`.
pub fn loops_below(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let backing = fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim()).starts_with(dir).then(|| format!("/dev/{name}"))
        })
        .collect()
}

/// Unmounts everything below a work directory, detaches its loop devices,
/// and removes it; refuses to remove anything while a mount remains (that
/// could be the host's /dev, bound in).
pub fn remove_work_dir(work: &Path, name: &str) -> Result<()> {
    for point in mounts_below(work) {
        if let Err(e) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("testbed {name}: cannot unmount {}: {e}", point.display());
        }
    }
    for device in loops_below(work) {
        let _ = Command::new("losetup").arg("-d").arg(&device).status();
    }
    let propagate = Path::new("/run/systemd/nspawn/propagate").join(name);
    if propagate.exists() && mounts_below(&propagate).is_empty() {
        let _ = fs::remove_dir_all(&propagate);
    }
    let left = mounts_below(work);
    if !left.is_empty() {
        return Err(Error(format!("{name}: mounts remain under {}, not removing it: {left:?}", work.display())));
    }
    let loops = loops_below(work);
    if !loops.is_empty() {
        return Err(Error(format!("{name}: loop devices remain attached: {loops:?}")));
    }
    let mut attempt = 0;
    while work.exists() {
        match fs::remove_dir_all(work) {
            Ok(()) => break,
            // A test thread may still be writing into the root while an
            // interrupted run tears down; and tests may leave immutable
            // (read-only) images behind. Clear the flag and try again.
            Err(_) if attempt < 5 => {
                attempt += 1;
                let _ = Command::new("chattr").arg("-R").arg("-i").arg(work).output();
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(Error(format!("cannot remove {}: {e}", work.display()))),
        }
    }
    Ok(())
}

/// A cgroup per testbed in every hierarchy this process is in (cpuset
/// aside, which nothing in a testbed uses and whose new groups start with
/// no CPUs): testbeds booted by one process would otherwise share its
/// groups, and each one's systemd would create and remove `system.slice`
/// and the rest under the other's feet.
pub fn testbed_cgroups(name: &str) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let mount = match controllers {
                "" => "unified".to_string(),
                "name=systemd" => "systemd".to_string(),
                "cpuset" => return None,
                other if other.starts_with("name=") => return None,
                other => other.to_string(),
            };
            let base = Path::new("/sys/fs/cgroup").join(mount);
            base.is_dir().then(|| base.join(path.trim_start_matches('/')).join(name))
        })
        .collect()
}

/// Removes a testbed's cgroups, deepest first (its systemd may have left
/// groups behind when it was killed rather than powered off).
pub fn remove_cgroups(name: &str) {
    for dir in testbed_cgroups(name) {
        remove_cgroup_tree(&dir);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
