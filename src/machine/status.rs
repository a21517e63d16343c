//! What `machine status` shows beyond machined's record, as `machinectl
//! status` shows it: the machine's addresses and the processes of its
//! unit's cgroup as a tree.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// An address machined reports (`GetMachineAddresses`: family and bytes),
/// as text; `None` for a family or length it does not know.
pub fn format_address(family: i32, bytes: &[u8]) -> Option<String> {
    match (family, bytes.len()) {
        (nix::libc::AF_INET, 4) => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        (nix::libc::AF_INET6, 16) => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(Ipv6Addr::from(octets).to_string())
        }
        _ => None,
    }
}

/// A time in µs since the epoch as UTC, and how long ago that was from
/// `now` (also µs), as `2026-12-02 07:10:00 UTC; 1h 5min ago`.
pub fn format_since(usec: u64, now: u64) -> String {
    let ago = now.saturating_sub(usec) / 1_000_000;
    let ago = match ago {
        0..60 => format!("{ago}s"),
        60..3600 => format!("{}min {}s", ago / 60, ago % 60),
        3600..86_400 => format!("{}h {}min", ago / 3600, ago % 3600 / 60),
        _ => format!("{} days {}h", ago / 86_400, ago % 86_400 / 3600),
    };
    format!("{} UTC; {ago} ago", utc_date_time(usec / 1_000_000))
}

/// Seconds since the epoch as a UTC date and time, `2026-12-02 07:10:00`,
/// with the weekday (0 Sunday ... 6 Saturday).
pub fn utc_civil(secs: u64) -> (String, usize) {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;
    (format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60), weekday)
}

fn utc_date_time(secs: u64) -> String {
    utc_civil(secs).0
}

/// One cgroup: its name, its processes (PID and command line) and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub processes: Vec<(u32, String)>,
    pub children: Vec<Group>,
}

/// The cgroup tree as `systemctl status` draws it: the root's path, then
/// each process and child cgroup on its own line.
pub fn render(root: &Group) -> Vec<String> {
    let mut lines = vec![root.name.clone()];
    draw(root, "", &mut lines);
    lines
}

fn draw(group: &Group, prefix: &str, lines: &mut Vec<String>) {
    let count = group.processes.len() + group.children.len();
    let mut index = 0;
    for (pid, command) in &group.processes {
        index += 1;
        let branch = if index == count { "└─" } else { "├─" };
        lines.push(format!("{prefix}{branch}{pid} {command}"));
    }
    for child in &group.children {
        index += 1;
        let last = index == count;
        lines.push(format!("{prefix}{}{}", if last { "└─" } else { "├─" }, child.name));
        draw(child, &format!("{prefix}{}", if last { "  " } else { "│ " }), lines);
    }
}

/// Where the unified cgroup hierarchy is mounted on this host.
fn unified_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() { hybrid.to_path_buf() } else { PathBuf::from("/sys/fs/cgroup") }
}

/// A process's command line (its name in brackets when it has none, as ps does).
fn command_line(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> =
        cmdline.split(|&b| b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
    if words.is_empty() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("[{}]", comm.trim())
    } else {
        words.join(" ")
    }
}

/// How deep a tree is read, and how many processes at most: a machine
/// cannot make wharfd walk or print without bound.
const MAX_DEPTH: usize = 16;
const MAX_PROCESSES: usize = 1000;

/// Reads the tree of the cgroup `path` (as a unit's ControlGroup property
/// says it, e.g. `/machine.slice/wharf-f28.service`).
pub fn read_tree(path: &str) -> io::Result<Group> {
    let dir = unified_root().join(path.trim_start_matches('/'));
    let mut budget = MAX_PROCESSES;
    read_group(&dir, path.to_string(), 0, &mut budget)
}

fn read_group(dir: &Path, name: String, depth: usize, budget: &mut usize) -> io::Result<Group> {
    let mut processes = Vec::new();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        processes.push((pid, command_line(pid)));
    }
    let mut children = Vec::new();
    if depth < MAX_DEPTH {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for child in names {
            // A cgroup that goes while it is read is simply not shown.
            if let Ok(group) = read_group(&dir.join(&child), child, depth + 1, budget) {
                children.push(group);
            }
        }
    }
    Ok(Group { name, processes, children })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_text() {
        assert_eq!(format_address(nix::libc::AF_INET, &[10, 0, 0, 2]).unwrap(), "10.0.0.2");
        let mut v6 = [0u8; 16];
        v6[0] = 0xfe;
        v6[1] = 0x80;
        v6[15] = 1;
        assert_eq!(format_address(nix::libc::AF_INET6, &v6).unwrap(), "fe80::1");
        assert_eq!(format_address(nix::libc::AF_INET, &[1, 2]), None);
    }

    #[test]
    fn times_are_utc_and_how_long_ago() {
        // 2026-12-02 07:10:00 UTC.
        let at = 1_796_195_400 * 1_000_000;
        assert_eq!(format_since(at, at + 65_000_000), "2026-12-02 07:10:00 UTC; 1min 5s ago");
        assert_eq!(format_since(0, 3_600_000_000 * 25), "1970-01-01 00:00:00 UTC; 1 days 1h ago");
        assert_eq!(format_since(951_782_400_000_000, 951_782_400_000_000), "2000-02-29 00:00:00 UTC; 0s ago");
    }

    #[test]
    fn trees_are_drawn_as_systemctl_draws_them() {
        let tree = Group {
            name: "/machine.slice/wharf-f28.service".into(),
            processes: vec![],
            children: vec![
                Group {
                    name: "payload".into(),
                    processes: vec![],
                    children: vec![Group {
                        name: "init.scope".into(),
                        processes: vec![(12, "/usr/lib/systemd/systemd".into())],
                        children: vec![],
                    }],
                },
                Group {
                    name: "supervisor".into(),
                    processes: vec![(10, "/usr/lib/wharf/wharfd launch".into())],
                    children: vec![],
                },
            ],
        };
        assert_eq!(
            render(&tree),
            [
                "/machine.slice/wharf-f28.service",
                "├─payload",
                "│ └─init.scope",
                "│   └─12 /usr/lib/systemd/systemd",
                "└─supervisor",
                "  └─10 /usr/lib/wharf/wharfd launch",
            ]
        );
    }
}
