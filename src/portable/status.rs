//! One attached image, unit by unit, as `portable is-attached --json`
//! reports it: its profile and place, and for each unit what systemd says
//! of it and what its unit file says of starting and enabling it. This is
//! what a configuration tool needs to decide, without knowing wharf's files.

use std::path::Path;

use serde::Serialize;

use super::Attachments;
use super::dropin::{PROFILE_DROPIN, parse_marker};
use super::ops::{Host, Result};
use super::plan::unit_dir;
use super::profile::{PROFILE_DIRS, Profile, known};
use crate::systemd::manager::UnitManager;

/// An image's attachment, in detail.
#[derive(Debug, Clone, Serialize)]
pub struct ImageStatus {
    pub image: String,
    pub state: String,
    pub attached: bool,
    /// The sandbox profile its drop-ins come from; `None` when detached, or
    /// when they match no profile on the host (edited, or the profile changed since).
    pub profile: Option<String>,
    /// Attached below /run.
    pub runtime: bool,
    pub units: Vec<UnitStatus>,
}

/// One attached unit.
#[derive(Debug, Clone, Serialize)]
pub struct UnitStatus {
    pub name: String,
    /// systemd's ActiveState (`active`, `inactive`, `failed`, ...).
    pub active_state: String,
    /// systemd's UnitFileState (`enabled`, `disabled`, `static`, `indirect`, ...).
    pub unit_file_state: String,
    /// Its `[Install]` section asks for links of its own (`WantedBy=`,
    /// `RequiredBy=`, `UpheldBy=`, `Alias=`), so enabling it means
    /// something; a unit with only `Also=` is enabled through those units.
    pub installable: bool,
    /// It keeps running once started: anything but a oneshot service that
    /// does not remain after exit (that is a task).
    pub stays_up: bool,
    /// A template (`foo@.service`): neither started nor enabled by itself.
    pub template: bool,
}

/// The attachment of `path` (an image path as attached) in state `state`.
pub async fn status(host: &Host, systemd: &impl UnitManager, path: &str, state: &str) -> Result<ImageStatus> {
    let root = host.root.clone();
    let image = path.to_string();
    let mine = zruntime::unblock(move || Attachments::scan(&root).map(|a| a.of(&image).cloned().collect::<Vec<_>>()))
        .await
        .map_err(|source| super::Error::Io { path: host.root.clone(), source })?;
    let runtime = mine.first().is_some_and(|a| a.runtime);
    let names: Vec<String> = mine.into_iter().map(|a| a.unit).collect();
    let loadable: Vec<String> = names.iter().filter(|n| !template(n)).cloned().collect();
    let active = systemd.unit_states(&loadable).await?;
    let files = systemd.unit_file_states(&names).await?;
    let units = names
        .into_iter()
        .map(|name| {
            let active_state = active
                .iter()
                .find(|s| s.name == name)
                .map_or_else(|| "inactive".to_string(), |s| s.active_state.clone());
            let file_state = files.get(&name).cloned().unwrap_or_default();
            (name, active_state, file_state)
        })
        .collect();
    status_of(host, path, state, runtime, units).await
}

/// A template (`foo@.service`): neither loaded, started nor enabled by itself.
fn template(name: &str) -> bool {
    name.contains("@.")
}

/// [`status`] of the attached `units` as wharfd's view has them (name,
/// ActiveState, UnitFileState): the unit files and profile drop-ins are
/// read here, with the caller's rights.
pub async fn status_of(
    host: &Host,
    path: &str,
    state: &str,
    runtime: bool,
    units: Vec<(String, String, String)>,
) -> Result<ImageStatus> {
    let root = host.root.clone();
    let names: Vec<String> = units.iter().map(|(name, ..)| name.clone()).collect();
    let (texts, profile) = zruntime::unblock(move || {
        let dir = unit_dir(&root, runtime);
        let profile = names.iter().find_map(|unit| profile_of(&root, &dir.join(format!("{unit}.d")), unit));
        let texts: Vec<String> = names.iter().map(|unit| unit_text(&dir.join(unit))).collect();
        (texts, profile)
    })
    .await;
    let units = units
        .into_iter()
        .zip(texts)
        .map(|((name, active_state, unit_file_state), text)| UnitStatus {
            active_state,
            unit_file_state,
            installable: super::install::parse(&name, &text).is_ok_and(|install| !install.links.is_empty()),
            stays_up: stays_up(&text),
            template: template(&name),
            name,
        })
        .collect();
    Ok(ImageStatus {
        image: path.to_string(),
        attached: state != super::State::Detached.as_str(),
        state: state.to_string(),
        profile,
        runtime,
        units,
    })
}

/// Most of a unit file that is read: more is no unit file.
const UNIT_TEXT_LIMIT: u64 = 1 << 20;

/// A unit file's text, read as a regular file only and at most
/// [`UNIT_TEXT_LIMIT`] bytes: a symlinked unit leads into a directory
/// image, whose owner could have put a FIFO (an open that never returns)
/// or an endless file there. An unreadable one (an image gone) says nothing.
fn unit_text(path: &Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32).open(path)
    else {
        return String::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    match file.take(UNIT_TEXT_LIMIT).read_to_string(&mut text) {
        Ok(_) => text,
        Err(_) => String::new(),
    }
}

/// The profile whose drop-in `unit` has in `dropins` (its `.d`
/// directory): the profile a symlink points into, or the one whose
/// contents a copy (after wharf's marker) has.
pub fn profile_of(root: &Path, dropins: &Path, unit: &str) -> Option<String> {
    let dropin = dropins.join(PROFILE_DROPIN);
    if let Ok(target) = std::fs::read_link(&dropin) {
        let profile_dir = target.parent()?;
        let base = profile_dir.parent()?;
        let shipped = PROFILE_DIRS.iter().any(|dir| Path::new("/").join(dir) == base || root.join(dir) == base);
        return shipped.then(|| profile_dir.file_name()?.to_str().map(str::to_string)).flatten();
    }
    let copy = std::fs::read_to_string(&dropin).ok()?;
    parse_marker(&copy)?;
    let contents = copy.split_once('\n').map_or("", |(_, rest)| rest);
    known(root).into_iter().find(|name| {
        Profile::find(root, name)
            .ok()
            .and_then(|profile| profile.contents_for(unit).ok().flatten())
            .is_some_and(|(_, theirs)| theirs == contents)
    })
}

/// Whether a service keeps running once started: not a oneshot that
/// finishes (those are tasks, started by timers or other units, and would
/// be "not running" after every apply).
pub fn stays_up(unit: &str) -> bool {
    let setting = |key: &str| {
        unit.lines().rev().find_map(|line| line.trim().strip_prefix(key).map(|v| v.trim().to_ascii_lowercase()))
    };
    let oneshot = setting("Type=").is_some_and(|t| t == "oneshot");
    let remains = setting("RemainAfterExit=").is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on"));
    !oneshot || remains
}

#[cfg(test)]
mod tests {
    use super::super::dropin::marker;
    use super::*;

    #[test]
    fn oneshots_are_tasks_unless_they_remain() {
        assert!(stays_up("[Service]\nExecStart=/x\n"));
        assert!(!stays_up("[Service]\nType=oneshot\nExecStart=/x\n"));
        assert!(stays_up("[Service]\nType=oneshot\nRemainAfterExit=yes\n"));
        assert!(stays_up("[Service]\nType=notify\n"));
        assert!(stays_up("[Socket]\nListenStream=80\n"));
    }

    #[test]
    fn a_fifo_or_missing_unit_file_reads_as_nothing() {
        let dir = std::env::temp_dir().join(format!("wharf-status-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("x.service"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert_eq!(unit_text(&dir.join("x.service")), "");
        assert_eq!(unit_text(&dir.join("none.service")), "");
        std::fs::write(dir.join("y.service"), "[Service]\n").unwrap();
        assert_eq!(unit_text(&dir.join("y.service")), "[Service]\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn profile_is_read_from_a_link_or_a_copy() {
        let root = std::env::temp_dir().join(format!("wharf-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, text) in [("default", "[Service]\nA=1\n"), ("strict", "[Service]\nA=2\n")] {
            let dir = root.join("usr/lib/wharf/profiles").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("service.conf"), text).unwrap();
        }
        let linked = root.join("etc/systemd/system/a.service.d");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(
            root.join("usr/lib/wharf/profiles/strict/service.conf"),
            linked.join(PROFILE_DROPIN),
        )
        .unwrap();
        assert_eq!(profile_of(&root, &linked, "a.service").as_deref(), Some("strict"));

        let copied = root.join("etc/systemd/system/b.service.d");
        std::fs::create_dir_all(&copied).unwrap();
        std::fs::write(copied.join(PROFILE_DROPIN), format!("{}\n[Service]\nA=1\n", marker("/i.raw"))).unwrap();
        assert_eq!(profile_of(&root, &copied, "b.service").as_deref(), Some("default"));
        // Edited by hand: no profile says that.
        std::fs::write(copied.join(PROFILE_DROPIN), format!("{}\n[Service]\nA=3\n", marker("/i.raw"))).unwrap();
        assert_eq!(profile_of(&root, &copied, "b.service"), None);
        // A link to somewhere that is not a profile directory.
        let elsewhere = root.join("etc/systemd/system/c.service.d");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink("/tmp/x/service.conf", elsewhere.join(PROFILE_DROPIN)).unwrap();
        assert_eq!(profile_of(&root, &elsewhere, "c.service"), None);
        assert_eq!(profile_of(&root, &root.join("none.d"), "d.service"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
