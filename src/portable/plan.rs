//! Planning attach and detach: from an image's units, the profile and the
//! host as it is, the file steps of one [`Transaction`]. Everything that can
//! refuse (a unit that exists on the host, one attached from another image,
//! a running unit) is checked here, before anything is written.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::Error;
use super::attachments::{Attachment, Attachments, PERSISTENT_UNIT_DIR, RUNTIME_UNIT_DIR};
use super::dropin::{
    PORTABLE_DROPIN, PROFILE_DROPIN, marker_with_extensions, parse_marker, parse_marker_with_extensions, read_dropin,
};
use super::portabled::{Holder, add_image_link, add_mirror_steps};
use super::profile::{PROFILE_DIRS, Profile};
use crate::image::ImageKind;
use crate::image::policy::{DerivedPolicy, PinLevel};
use crate::image::units::UnitFile;
use crate::transaction::Transaction;

/// Every directory systemd loads system units from, in priority order.
pub const HOST_UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// How unit files and profile drop-ins get onto the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Copies of everything.
    Copy,
    /// Symlinks: units into a directory image, drop-ins to the profile.
    Symlink,
    /// Profile drop-ins as symlinks (profile updates apply), units copied
    /// from file images and linked from directory images.
    Auto,
    /// Profile drop-ins as symlinks, units always copied: a directory
    /// image's unit files can change under a link, a copy cannot.
    Mixed,
}

impl FromStr for CopyMode {
    type Err = Error;
    fn from_str(word: &str) -> Result<Self, Error> {
        match word {
            "copy" => Ok(CopyMode::Copy),
            "symlink" => Ok(CopyMode::Symlink),
            "auto" | "" => Ok(CopyMode::Auto),
            "mixed" => Ok(CopyMode::Mixed),
            other => Err(Error::InvalidCopyMode(other.to_string())),
        }
    }
}

/// What attach needs to know about one image.
#[derive(Debug, Clone)]
pub struct Source {
    /// Absolute path of the image on the host (after any decompression).
    pub image: PathBuf,
    pub kind: ImageKind,
    /// Its units and those of its extensions.
    pub units: Vec<UnitFile>,
    /// Extension images stacked on it, in order (`--extension`).
    pub extensions: Vec<Extension>,
    /// The image policy it satisfies and is pinned to (`--image-policy`).
    pub image_policy: Option<String>,
    /// Without `--image-policy`, the policy the image satisfies as it is,
    /// and the one its file extension images share: pinned where systemd
    /// reads them (`AttachOptions::pin`).
    pub derived_policy: Option<DerivedPolicy>,
    pub derived_extension_policy: Option<DerivedPolicy>,
    /// The root hash of a verity-protected GPT image, checked against the
    /// image when it was read: written as `RootHash=`, so that the service
    /// opens only these bytes.
    pub verity: Option<VerityPin>,
}

/// What pins a verity-protected image's contents in its attachment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerityPin {
    /// Hex, as `RootHash=` takes it.
    pub root_hash: String,
    /// The base64 PKCS#7 signature of the root hash from the image's
    /// signature partition, for `RootHashSignature=base64:`.
    pub signature: Option<String>,
}

/// The policies a source's services are pinned to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    /// `RootImagePolicy=`
    pub root: Option<String>,
    /// `ExtensionImagePolicy=`
    pub extensions: Option<String>,
}

/// An extension image stacked on a [`Source`].
#[derive(Debug, Clone)]
pub struct Extension {
    /// Absolute path on the host (after any decompression).
    pub image: PathBuf,
    pub kind: ImageKind,
    /// The names of the source's units that come from this extension.
    pub units: Vec<String>,
}

impl Source {
    pub fn image_str(&self) -> String {
        self.image.display().to_string()
    }

    pub fn extension_strs(&self) -> Vec<String> {
        self.extensions.iter().map(|e| e.image.display().to_string()).collect()
    }

    /// The first line of every file written for this source.
    fn marker(&self) -> String {
        marker_with_extensions(&self.image_str(), &self.extension_strs())
    }

    /// The image a unit was read from, and its kind: an extension's, or the image's own.
    fn origin(&self, unit: &UnitFile) -> (&Path, ImageKind) {
        self.extensions
            .iter()
            .find(|e| e.units.contains(&unit.name))
            .map_or((self.image.as_path(), self.kind), |e| (e.image.as_path(), e.kind))
    }

    /// The value of `PORTABLE=`: the image's file name.
    fn portable_name(&self) -> String {
        self.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub profile: Profile,
    pub copy: CopyMode,
    pub runtime: bool,
    pub force: bool,
    /// Bind the host's os-release to /run/host/os-release in the drop-in:
    /// systemd before 254 needs it; later ones mount it for every
    /// RootImage=/RootDirectory= service themselves, and refuse a second
    /// mount there (EEXIST).
    pub bind_os_release: bool,
    /// How much of a derived image policy the host's systemd reads.
    pub pin: PinLevel,
    /// An attachment made unpinned (before wharf pinned) stays so when
    /// attached again exactly as it is: only a reattach pins it, so that
    /// an idempotent attach is still a no-op after an upgrade of wharf.
    pub keep_unpinned: bool,
}

/// The first systemd version that provides /run/host/os-release itself.
pub const SYSTEMD_PROVIDES_HOST_OS_RELEASE: u32 = 254;

/// The unit directory an attachment goes to.
pub fn unit_dir(root: &Path, runtime: bool) -> PathBuf {
    root.join(if runtime { RUNTIME_UNIT_DIR } else { PERSISTENT_UNIT_DIR })
}

/// What `source`'s services are pinned to: the policy given, or the one
/// derived from the image; nothing for an attachment of the same image in
/// `dest` that is unpinned and is to stay so (`keep_unpinned`).
pub fn pins_for(source: &Source, dest: &Path, options: &AttachOptions) -> Result<Pins, Error> {
    let derived = Pins {
        root: source.derived_policy.as_ref().and_then(|p| p.render(options.pin)),
        extensions: source.derived_extension_policy.as_ref().and_then(|p| p.render(options.pin)),
    };
    let pins = Pins { root: source.image_policy.clone().or(derived.root), extensions: derived.extensions };
    if source.image_policy.is_none() && options.keep_unpinned && attached_unpinned(source, dest)? {
        return Ok(Pins::default());
    }
    Ok(pins)
}

/// Whether a service of `source` is attached in `dest` from this very image
/// (its drop-in carries the image's marker) without `RootImagePolicy=`.
fn attached_unpinned(source: &Source, dest: &Path) -> Result<bool, Error> {
    let marker = source.marker();
    for unit in source.units.iter().filter(|u| u.is_service()) {
        let path = dest.join(format!("{}.d", unit.name)).join(PORTABLE_DROPIN);
        let text = read_dropin(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        if text.is_some_and(|text| {
            text.lines().next() == Some(marker.as_str()) && !text.lines().any(|l| l.starts_with("RootImagePolicy="))
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `20-portable.conf` drop-in tying `unit` to its image.
pub fn portable_dropin(source: &Source, unit: &UnitFile, bind_os_release: bool, pins: &Pins) -> String {
    let image = source.image_str();
    let mut text = format!("{}\n", source.marker());
    if unit.is_service() {
        let root = if source.kind.is_file() { "RootImage" } else { "RootDirectory" };
        let name = source.portable_name();
        text.push_str(&format!("[Service]\n{root}={image}\n"));
        if let Some(verity) = &source.verity {
            text.push_str(&format!("RootHash={}\n", verity.root_hash));
            if let Some(signature) = &verity.signature {
                text.push_str(&format!("RootHashSignature=base64:{signature}\n"));
            }
        }
        // Stacked in the order given, as systemd stacks each list.
        let list = |files: bool| -> Vec<String> {
            source
                .extensions
                .iter()
                .filter(|e| e.kind.is_file() == files)
                .map(|e| e.image.display().to_string())
                .collect()
        };
        for (setting, paths) in [("ExtensionImages", list(true)), ("ExtensionDirectories", list(false))] {
            if !paths.is_empty() {
                text.push_str(&format!("{setting}={}\n", paths.join(" ")));
            }
        }
        if let Some(policy) = &pins.root {
            text.push_str(&format!("RootImagePolicy={policy}\n"));
        }
        if let Some(policy) = pins.extensions.as_ref().filter(|_| source.extensions.iter().any(|e| e.kind.is_file())) {
            text.push_str(&format!("ExtensionImagePolicy={policy}\n"));
        }
        text.push_str(&format!("Environment=PORTABLE={name}\n"));
        if bind_os_release {
            text.push_str("BindReadOnlyPaths=/etc/os-release:/run/host/os-release\n");
        }
        // Journal fields to find the service's messages by image, and by image version.
        let versioned =
            crate::image::ImageName::new(&name).map(|n| n.stem().to_string()).unwrap_or_else(|_| name.clone());
        text.push_str(&format!(
            "LogExtraFields=PORTABLE={name}\nLogExtraFields=PORTABLE_NAME_AND_VERSION={versioned}\n"
        ));
        for extension in &source.extensions {
            let file = extension.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            text.push_str(&format!("LogExtraFields=PORTABLE_EXTENSION={file}\n"));
        }
    }
    text
}

/// The first systemd version that knows `ExtensionDirectories=`.
pub const SYSTEMD_EXTENSION_DIRECTORIES: u32 = 251;

/// Adds to `tx` the steps that attach `sources`, and returns the unit names
/// attached. `existing` is what is attached now; units of the images in
/// `replacing` are being detached by the same transaction (reattach) and
/// are not conflicts.
pub fn plan_attach(
    root: &Path,
    sources: &[Source],
    options: &AttachOptions,
    existing: &Attachments,
    replacing: &[String],
    tx: &mut Transaction,
) -> Result<Vec<String>, Error> {
    let dest = unit_dir(root, options.runtime);
    let mut names: Vec<String> = Vec::new();
    for source in sources {
        let image = source.image_str();
        if image.contains(['\'', '\n']) || !source.image.is_absolute() {
            return Err(Error::InvalidImagePath(image));
        }
        if source.units.is_empty() {
            return Err(Error::NoUnits(image));
        }
        if !source.extensions.is_empty() && !crate::image::extension::valid_setting_path(&source.image) {
            return Err(Error::InvalidExtensionPath { image: image.clone(), path: image });
        }
        for extension in &source.extensions {
            let path = extension.image.display().to_string();
            if !crate::image::extension::valid_setting_path(&extension.image) {
                return Err(Error::InvalidExtensionPath { image, path });
            }
        }
        if options.profile.name != TRUSTED_PROFILE {
            for unit in &source.units {
                if let Some(line) = host_exec_line(&unit.name, &unit.contents) {
                    return Err(Error::HostExec { unit: unit.name.clone(), image, line });
                }
            }
        }
        for unit in &source.units {
            if let Some(other) =
                sources.iter().find(|s| s.image != source.image && s.units.iter().any(|u| u.name == unit.name))
            {
                return Err(Error::DuplicateUnit { unit: unit.name.clone(), first: image, second: other.image_str() });
            }
            check_conflict(root, &dest, &image, &unit.name, options, existing, replacing)?;
            names.push(unit.name.clone());
        }
    }

    // Drop-ins first, unit files last: systemd never sees a unit without its sandbox.
    for source in sources {
        let pins = pins_for(source, &dest, options)?;
        for unit in &source.units {
            let dropins = dest.join(format!("{}.d", unit.name));
            tx.make_dir(&dropins);
            tx.write(
                dropins.join(PORTABLE_DROPIN),
                portable_dropin(source, unit, options.bind_os_release, &pins),
                0o644,
            );
            if let Some((profile_file, contents)) = options.profile.contents_for(&unit.name)? {
                match options.copy {
                    CopyMode::Copy => {
                        tx.write(dropins.join(PROFILE_DROPIN), format!("{}\n{contents}", source.marker()), 0o644)
                    }
                    CopyMode::Symlink | CopyMode::Auto | CopyMode::Mixed => {
                        tx.symlink(dropins.join(PROFILE_DROPIN), profile_file)
                    }
                }
            } else {
                // A profile without a drop-in for this unit type: drop a stale one.
                tx.remove(dropins.join(PROFILE_DROPIN));
            }
        }
    }
    for source in sources {
        for unit in &source.units {
            let path = dest.join(&unit.name);
            let (origin, kind) = source.origin(unit);
            let link = match options.copy {
                // A file image's units cannot be linked to: copied, as
                // portablectl does.
                CopyMode::Symlink | CopyMode::Auto => !kind.is_file(),
                CopyMode::Copy | CopyMode::Mixed => false,
            };
            if link {
                tx.symlink(path, in_directory_image(origin, &unit.path));
            } else {
                tx.write(path, format!("{}\n{}", source.marker(), unit.contents), 0o644);
            }
        }
    }
    // What portablectl reads, once wharf's own files are in place; never
    // over a unit file there that is not wharf's mirror (--force let wharf
    // attach over it, not replace it).
    for source in sources {
        for unit in &source.units {
            let holder = super::portabled::holder(root, &unit.name).map_err(|source| Error::Io {
                path: super::portabled::attached_dir(root, options.runtime).join(&unit.name),
                source,
            })?;
            if matches!(holder, None | Some(Holder::Mirror { .. })) {
                add_mirror_steps(root, options.runtime, &source.image_str(), &unit.name, &dest, tx);
            }
        }
        add_image_link(root, &source.image, options.runtime, tx);
    }
    Ok(names)
}

/// The profile whose units may run commands on the host.
pub const TRUSTED_PROFILE: &str = "trusted";

/// The longest part of a unit file line an error quotes.
const QUOTED_LINE_MAX: usize = 120;

/// The first line of a unit file that would make systemd run a command on
/// the host rather than in the image, if any: an `Exec…=` setting of a unit
/// that is not a service (a service's commands run in the image, through
/// `RootImage=`/`RootDirectory=`; a socket's `ExecStartPre=`, for one, runs
/// in the host's root with no sandbox). Every section counts, and keys are
/// compared without regard to case: a refusal too many, never one too few.
pub fn host_exec_line(unit: &str, contents: &str) -> Option<String> {
    if unit.ends_with(".service") {
        return None;
    }
    contents.lines().map(str::trim).find_map(|line| {
        if line.starts_with(['#', ';']) {
            return None;
        }
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        key.get(..4).is_some_and(|head| head.eq_ignore_ascii_case("exec")).then(|| quote_line(line))
    })
}

fn quote_line(line: &str) -> String {
    let printable: String = line.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    match printable.char_indices().nth(QUOTED_LINE_MAX) {
        Some((cut, _)) => format!("{}...", &printable[..cut]),
        None => printable,
    }
}

/// The host path of a file inside a directory image.
fn in_directory_image(image: &Path, inner: &str) -> PathBuf {
    image.join(inner.trim_start_matches('/'))
}

fn check_conflict(
    root: &Path,
    dest: &Path,
    image: &str,
    unit: &str,
    options: &AttachOptions,
    existing: &Attachments,
    replacing: &[String],
) -> Result<(), Error> {
    // portabled's attachments first: attaching over one would hide it from
    // systemd while portablectl still counts it as attached.
    let holder = super::portabled::holder(root, unit)
        .map_err(|source| Error::Io { path: super::portabled::attached_dir(root, false).join(unit), source })?;
    match holder {
        Some(Holder::Portabled { image, path }) => {
            return Err(Error::AttachedByPortabled { unit: unit.to_string(), image, path });
        }
        Some(Holder::Other { path }) if !options.force => {
            return Err(Error::UnitExists { unit: unit.to_string(), path });
        }
        Some(Holder::Other { .. } | Holder::Mirror { .. }) | None => {}
    }
    if let Some(current) = existing.0.iter().find(|a| a.unit == unit) {
        if replacing.contains(&current.image) {
            return Ok(());
        }
        if current.image != image {
            return Err(Error::AttachedFrom { unit: unit.to_string(), image: current.image.clone() });
        }
        if current.runtime != options.runtime {
            let how = if current.runtime { "at runtime" } else { "persistently" };
            return Err(Error::AttachedOtherwise { unit: unit.to_string(), image: image.to_string(), how });
        }
        // The same image again, the same way: a refresh.
        return Ok(());
    }
    for dir in HOST_UNIT_DIRS {
        let path = root.join(dir).join(unit);
        if path.symlink_metadata().is_err() {
            continue;
        }
        let takes_precedence = options.runtime && dir.starts_with("etc/");
        if takes_precedence {
            return Err(Error::Shadowed { unit: unit.to_string(), path });
        }
        if !options.force {
            return Err(Error::UnitExists { unit: unit.to_string(), path });
        }
        if path.parent() == Some(dest) {
            tracing::warn!(unit, path = %path.display(), "--force: replacing a unit file wharf did not write");
        }
    }
    Ok(())
}

/// What detaching one unit removes, found by wharf's marks only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachUnit {
    pub unit: String,
    pub runtime: bool,
    /// Files to remove, in order (the unit file first, so systemd never sees
    /// it without its drop-ins).
    pub remove: Vec<PathBuf>,
    /// Files left alone because wharf did not write them.
    pub kept: Vec<PathBuf>,
}

/// Which of the files of an attachment wharf wrote, and so may remove.
pub fn plan_detach_unit(root: &Path, attachment: &Attachment) -> Result<DetachUnit, Error> {
    let dir = unit_dir(root, attachment.runtime);
    let unit_path = dir.join(&attachment.unit);
    let dropins = dir.join(format!("{}.d", attachment.unit));
    // The mirror portablectl reads goes first, so it never names a unit
    // that has gone.
    let mut remove = super::portabled::mirror_files(root, attachment.runtime, &attachment.unit).map_err(|source| {
        Error::Io { path: super::portabled::attached_dir(root, attachment.runtime).join(&attachment.unit), source }
    })?;
    let mut kept = Vec::new();

    // Units linked into a directory extension point into it, not the image.
    let extensions = attached_extensions(root, attachment)?;
    let ours = |path: &Path| -> Result<bool, Error> { written_by_wharf(root, path, &attachment.image, &extensions) };
    if unit_path.symlink_metadata().is_ok() {
        if ours(&unit_path)? {
            remove.push(unit_path);
        } else {
            kept.push(unit_path);
        }
    }
    // Every drop-in wharf wrote for this image (the profile, fleet
    // settings, ...), the one that marks the attachment last.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dropins)
        .map_err(|e| Error::Io { path: dropins.clone(), source: e })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let marker = dropins.join(PORTABLE_DROPIN);
    let mut others = false;
    for path in entries.iter().filter(|p| **p != marker) {
        if ours(path)? {
            remove.push(path.clone());
        } else {
            others = true;
            if path.file_name().is_some_and(|n| n == PROFILE_DROPIN) {
                kept.push(path.clone());
            }
        }
    }
    remove.push(marker);
    if !others {
        remove.push(dropins);
    }
    Ok(DetachUnit { unit: attachment.unit.clone(), runtime: attachment.runtime, remove, kept })
}

/// The extensions an attached unit's marker names (none for a unit
/// attached without), read from its `20-portable.conf`.
pub fn attached_extensions(root: &Path, attachment: &Attachment) -> Result<Vec<String>, Error> {
    let dropin = unit_dir(root, attachment.runtime).join(format!("{}.d", attachment.unit)).join(PORTABLE_DROPIN);
    let text = match std::fs::read_to_string(&dropin) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: dropin, source }),
    };
    Ok(parse_marker_with_extensions(&text)
        .map(|(_, extensions)| extensions.into_iter().map(str::to_string).collect())
        .unwrap_or_default())
}

/// Whether a file next to an attached unit was written by wharf for `image`
/// (with `extensions`): it carries the marker, or it is a symlink into the
/// image, into one of its extensions or to a profile.
fn written_by_wharf(root: &Path, path: &Path, image: &str, extensions: &[String]) -> Result<bool, Error> {
    let meta = path.symlink_metadata().map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let into_image = target.starts_with(image) || extensions.iter().any(|e| target.starts_with(e));
        let to_profile = PROFILE_DIRS
            .iter()
            .any(|dir| target.starts_with(Path::new("/").join(dir)) || target.starts_with(root.join(dir)));
        return Ok(into_image || to_profile);
    }
    if !meta.is_file() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(parse_marker(&text) == Some(image))
}

/// Adds the removals of `units` to `tx`.
pub fn add_detach_steps(units: &[DetachUnit], tx: &mut Transaction) {
    for unit in units {
        for path in &unit.remove {
            tx.remove(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::units::UnitFile;
    use crate::portable::Attachments;

    struct Host {
        root: PathBuf,
    }

    impl Host {
        fn new(tag: &str) -> Host {
            let root = std::env::temp_dir().join(format!("wharf-plan-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for dir in
                ["etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system", "usr/lib/wharf/profiles/default"]
            {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            std::fs::write(root.join("usr/lib/wharf/profiles/default/service.conf"), "[Service]\nDynamicUser=yes\n")
                .unwrap();
            Host { root }
        }

        fn options(&self, copy: CopyMode, runtime: bool, force: bool) -> AttachOptions {
            AttachOptions {
                profile: Profile::find(&self.root, "default").unwrap(),
                copy,
                runtime,
                force,
                bind_os_release: true,
                pin: PinLevel::Off,
                keep_unpinned: true,
            }
        }

        fn attach(&self, sources: &[Source], options: &AttachOptions) -> Result<Vec<String>, Error> {
            let existing = Attachments::scan(&self.root).unwrap();
            let mut tx = Transaction::new(&self.root.join("journal"));
            let units = plan_attach(&self.root, sources, options, &existing, &[], &mut tx)?;
            tx.apply().unwrap();
            tx.commit().unwrap();
            Ok(units)
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.root.join(rel)).unwrap()
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn unit(name: &str) -> UnitFile {
        let contents =
            if name.ends_with(".service") { "[Service]\nExecStart=/x\n" } else { "[Socket]\nListenStream=80\n" };
        UnitFile { name: name.into(), path: format!("/usr/lib/systemd/system/{name}"), contents: contents.into() }
    }

    #[test]
    fn commands_that_run_on_the_host_are_found() {
        let socket = "[Unit]\nDescription=x\n# ExecStartPre=/commented\n; ExecStopPost=/also\n[Socket]\nListenStream=80\n  ExecStartPre = /bin/sh -c 'id'\n";
        assert_eq!(host_exec_line("a.socket", socket).as_deref(), Some("ExecStartPre = /bin/sh -c 'id'"));
        for (unit, text) in [
            ("a.socket", "[Socket]\nExecStopPost=/x\n"),
            ("a.path", "[Path]\nPathExists=/x\nExecStart=/x\n"),
            ("a.timer", "[Timer]\nexecstartpre=/x\n"),
            ("a.socket", "[Service]\nExecStart=/x\n"),
        ] {
            assert!(host_exec_line(unit, text).is_some(), "{unit}: {text}");
        }
        for (unit, text) in [
            ("a.service", "[Service]\nExecStartPre=/x\nExecStart=/y\n"),
            ("a.socket", "[Socket]\nListenStream=80\nAccept=yes\n"),
            ("a.timer", "[Timer]\nOnCalendar=daily\nUnit=a.service\n"),
            ("a.path", "[Path]\nPathChanged=/etc/executable\n"),
            ("a.socket", "# Exec=/x\n"),
        ] {
            assert_eq!(host_exec_line(unit, text), None, "{unit}: {text}");
        }
        let long = format!("[Socket]\nExecStartPre=/bin/{}\x1b\n", "x".repeat(300));
        let quoted = host_exec_line("a.socket", &long).unwrap();
        assert!(quoted.ends_with("...") && quoted.chars().count() == QUOTED_LINE_MAX + 3, "{quoted}");
        let control = host_exec_line("a.socket", "ExecStartPre=/x\x1b[2J\n").unwrap();
        assert_eq!(control, "ExecStartPre=/x?[2J");
    }

    #[test]
    fn host_commands_are_refused_unless_trusted() {
        let host = Host::new("hostexec");
        std::fs::create_dir_all(host.root.join("usr/lib/wharf/profiles/trusted")).unwrap();
        let mut source = raw("/var/lib/portables/foobar.raw", &["foobar.service", "foobar.socket"]);
        source.units[1].contents = "[Socket]\nListenStream=80\nExecStartPre=/usr/bin/touch /etc/owned\n".into();
        let error = host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Copy, false, false));
        let error = error.unwrap_err().to_string();
        assert_eq!(
            error,
            "unit 'foobar.socket' of image '/var/lib/portables/foobar.raw' runs 'ExecStartPre=/usr/bin/touch \
             /etc/owned' on the host, outside the image; only the trusted profile attaches such units"
        );
        let written: Vec<_> = std::fs::read_dir(host.root.join("etc/systemd/system")).unwrap().collect();
        assert!(written.is_empty(), "a refused attach wrote {written:?}");
        let trusted = AttachOptions {
            profile: Profile::find(&host.root, TRUSTED_PROFILE).unwrap(),
            ..host.options(CopyMode::Copy, false, false)
        };
        assert_eq!(host.attach(&[source], &trusted).unwrap(), ["foobar.service", "foobar.socket"]);
    }

    fn raw(image: &str, units: &[&str]) -> Source {
        Source {
            image: image.into(),
            kind: ImageKind::Squashfs,
            units: units.iter().map(|u| unit(u)).collect(),
            extensions: Vec::new(),
            image_policy: None,
            derived_policy: None,
            derived_extension_policy: None,
            verity: None,
        }
    }

    #[test]
    fn attach_writes_units_and_dropins() {
        let host = Host::new("attach");
        let source = raw("/var/lib/portables/foobar.raw", &["foobar.service", "foobar.socket"]);
        let units = host.attach(&[source], &host.options(CopyMode::Auto, false, false)).unwrap();
        assert_eq!(units, ["foobar.service", "foobar.socket"]);

        let dropin = host.read("etc/systemd/system/foobar.service.d/20-portable.conf");
        assert_eq!(
            dropin,
            "# Drop-in created by wharf for image '/var/lib/portables/foobar.raw', do not edit.\n[Service]\n\
             RootImage=/var/lib/portables/foobar.raw\nEnvironment=PORTABLE=foobar.raw\n\
             BindReadOnlyPaths=/etc/os-release:/run/host/os-release\nLogExtraFields=PORTABLE=foobar.raw\n\
             LogExtraFields=PORTABLE_NAME_AND_VERSION=foobar\n"
        );
        let socket_dropin = host.read("etc/systemd/system/foobar.socket.d/20-portable.conf");
        assert_eq!(socket_dropin.lines().count(), 1, "non-service units only get the marker");
        let profile =
            std::fs::read_link(host.root.join("etc/systemd/system/foobar.service.d/10-profile.conf")).unwrap();
        assert_eq!(profile, host.root.join("usr/lib/wharf/profiles/default/service.conf"));
        assert!(!host.root.join("etc/systemd/system/foobar.socket.d/10-profile.conf").exists());
        let unit_file = host.read("etc/systemd/system/foobar.service");
        assert!(unit_file.starts_with("# Drop-in created by wharf for image '/var/lib/portables/foobar.raw'"));
        assert!(unit_file.ends_with("[Service]\nExecStart=/x\n"));

        let attached = Attachments::scan(&host.root).unwrap();
        assert_eq!(attached.file_state("/var/lib/portables/foobar.raw"), crate::portable::State::Attached);
    }

    #[test]
    fn directory_images_get_root_directory_and_links() {
        let host = Host::new("dir");
        let source = Source {
            image: "/srv/foobar".into(),
            kind: ImageKind::Directory,
            units: vec![unit("foobar.service")],
            extensions: Vec::new(),
            image_policy: None,
            derived_policy: None,
            derived_extension_policy: None,
            verity: None,
        };
        host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Auto, true, false)).unwrap();
        assert!(
            host.read("run/systemd/system/foobar.service.d/20-portable.conf").contains("\nRootDirectory=/srv/foobar\n")
        );
        assert_eq!(
            std::fs::read_link(host.root.join("run/systemd/system/foobar.service")).unwrap(),
            PathBuf::from("/srv/foobar/usr/lib/systemd/system/foobar.service")
        );
        let copied = host.options(CopyMode::Copy, false, false);
        let raw_source = raw("/x/other.raw", &["other.service"]);
        host.attach(std::slice::from_ref(&raw_source), &copied).unwrap();
        assert!(
            host.read("etc/systemd/system/other.service.d/10-profile.conf").starts_with("# Drop-in created by wharf")
        );
        // --copy=symlink of a file image copies its units, as portablectl's, and links the profile.
        let symlinked = host.options(CopyMode::Symlink, false, false);
        let linked = raw("/x/linked.raw", &["linked.service"]);
        host.attach(&[linked], &symlinked).unwrap();
        assert!(host.read("etc/systemd/system/linked.service").starts_with("# Drop-in created by wharf"));
        assert!(host.root.join("etc/systemd/system/linked.service.d/10-profile.conf").is_symlink());
    }

    #[test]
    fn mixed_copies_the_units_of_a_directory_image_and_links_the_profile() {
        let host = Host::new("mixed");
        let source = Source {
            image: "/srv/foobar".into(),
            kind: ImageKind::Directory,
            units: vec![unit("foobar.service")],
            extensions: Vec::new(),
            image_policy: None,
            derived_policy: None,
            derived_extension_policy: None,
            verity: None,
        };
        host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Mixed, false, false)).unwrap();
        let unit = host.root.join("etc/systemd/system/foobar.service");
        assert!(!unit.symlink_metadata().unwrap().is_symlink(), "the unit file is a copy");
        assert!(host.read("etc/systemd/system/foobar.service").starts_with("# Drop-in created by wharf"));
        let profile = host.root.join("etc/systemd/system/foobar.service.d/10-profile.conf");
        assert!(profile.symlink_metadata().unwrap().is_symlink(), "the profile drop-in is a link");
        assert_eq!("mixed".parse::<CopyMode>().unwrap(), CopyMode::Mixed);
    }

    #[test]
    fn conflicts_are_refused_before_writing() {
        let host = Host::new("conflict");
        std::fs::write(host.root.join("usr/lib/systemd/system/dbus.service"), "[Service]\n").unwrap();
        let before = std::fs::read_dir(host.root.join("etc/systemd/system")).unwrap().count();
        let source = raw("/p/dbus.raw", &["dbus-extra.service", "dbus.service"]);
        let error =
            host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Auto, false, false)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "unit 'dbus.service' exists on the host already ({}); use --force to attach over it",
                host.root.join("usr/lib/systemd/system/dbus.service").display()
            )
        );
        assert_eq!(std::fs::read_dir(host.root.join("etc/systemd/system")).unwrap().count(), before);
        // --force attaches over it (the /etc copy shadows /usr/lib).
        host.attach(&[source], &host.options(CopyMode::Auto, false, true)).unwrap();

        // Another image bringing the same unit is refused, even with --force.
        let second = raw("/p/dbus_2.raw", &["dbus.service"]);
        let error = host.attach(&[second], &host.options(CopyMode::Auto, false, true)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unit 'dbus.service' is already attached from image '/p/dbus.raw'; use reattach to replace it"
        );
        // Two images of one batch bringing the same unit.
        let a = raw("/p/a.raw", &["same.service"]);
        let b = raw("/p/b.raw", &["same.service"]);
        assert!(matches!(
            host.attach(&[a, b], &host.options(CopyMode::Auto, false, false)),
            Err(Error::DuplicateUnit { .. })
        ));
    }

    #[test]
    fn portabled_attachments_are_refused_even_with_force() {
        let host = Host::new("portabled");
        let attached = host.root.join("etc/systemd/system.attached");
        std::fs::create_dir_all(attached.join("foobar.service.d")).unwrap();
        std::fs::write(attached.join("foobar.service"), "[Service]\n").unwrap();
        std::fs::write(
            attached.join("foobar.service.d/20-portable.conf"),
            "# Drop-in created for image '/var/lib/portables/foobar.raw', do not edit.\n",
        )
        .unwrap();
        let error = host
            .attach(&[raw("/p/foobar.raw", &["foobar.service"])], &host.options(CopyMode::Auto, false, true))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "unit 'foobar.service' is attached by portablectl from image '/var/lib/portables/foobar.raw' ({}); \
                 detach it with portablectl first",
                attached.join("foobar.service").display()
            )
        );
        assert!(!host.root.join("etc/systemd/system/foobar.service").exists());
        // A unit file there without portabled's marker is the host's: --force attaches over it.
        std::fs::remove_file(attached.join("foobar.service.d/20-portable.conf")).unwrap();
        let refused =
            host.attach(&[raw("/p/foobar.raw", &["foobar.service"])], &host.options(CopyMode::Auto, false, false));
        assert!(matches!(refused, Err(Error::UnitExists { .. })), "{refused:?}");
        host.attach(&[raw("/p/foobar.raw", &["foobar.service"])], &host.options(CopyMode::Auto, false, true)).unwrap();
        assert_eq!(std::fs::read_to_string(attached.join("foobar.service")).unwrap(), "[Service]\n", "not replaced");
    }

    #[test]
    fn detach_removes_only_what_wharf_wrote() {
        let host = Host::new("detach");
        let source = raw("/p/foobar.raw", &["foobar.service"]);
        host.attach(&[source], &host.options(CopyMode::Auto, false, false)).unwrap();
        std::fs::write(host.root.join("etc/systemd/system/foobar.service.d/50-admin.conf"), "[Service]\n").unwrap();
        let attached = Attachments::scan(&host.root).unwrap();
        let attachment = attached.of("/p/foobar.raw").next().unwrap();
        let plan = plan_detach_unit(&host.root, attachment).unwrap();
        let dir = host.root.join("etc/systemd/system");
        let mirror = host.root.join("etc/systemd/system.attached");
        assert_eq!(
            plan.remove,
            [
                mirror.join("foobar.service"),
                mirror.join("foobar.service.d/20-portable.conf"),
                mirror.join("foobar.service.d"),
                dir.join("foobar.service"),
                dir.join("foobar.service.d/10-profile.conf"),
                dir.join("foobar.service.d/20-portable.conf")
            ]
        );
        // The admin's drop-in keeps the directory.
        assert!(plan.kept.is_empty());

        // portabled's entry of the same name is never wharf's to remove.
        std::fs::write(
            mirror.join("foobar.service.d/20-portable.conf"),
            "# Drop-in created for image '/p/foobar.raw', do not edit.\n",
        )
        .unwrap();
        let plan = plan_detach_unit(&host.root, attachment).unwrap();
        assert!(!plan.remove.iter().any(|p| p.starts_with(&mirror)), "{:?}", plan.remove);

        // A unit file someone replaced by hand is kept.
        std::fs::write(dir.join("foobar.service"), "[Service]\nExecStart=/mine\n").unwrap();
        std::fs::remove_file(dir.join("foobar.service.d/50-admin.conf")).unwrap();
        let plan = plan_detach_unit(&host.root, attachment).unwrap();
        assert_eq!(plan.kept, [dir.join("foobar.service")]);
        assert_eq!(plan.remove.last().unwrap(), &dir.join("foobar.service.d"));
    }

    #[test]
    fn an_attachment_is_pinned_to_its_image_and_an_unpinned_one_stays_so() {
        let host = Host::new("pins");
        let mut source = raw("/p/foobar.raw", &["foobar.service", "foobar.socket"]);
        source.derived_policy = Some(DerivedPolicy::of_file_system("squashfs"));
        let dropin = "etc/systemd/system/foobar.service.d/20-portable.conf";
        // Unpinned where systemd cannot read a policy, as attachments were before.
        host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Copy, false, false)).unwrap();
        assert!(!host.read(dropin).contains("ImagePolicy"), "{}", host.read(dropin));
        // Attached again as it is, it stays unpinned; a reattach pins it.
        let protection = AttachOptions { pin: PinLevel::Protection, ..host.options(CopyMode::Copy, false, false) };
        let pins = pins_for(&source, &host.root.join("etc/systemd/system"), &protection).unwrap();
        assert_eq!(pins, Pins::default());
        let reattach = AttachOptions { keep_unpinned: false, ..protection.clone() };
        let existing = Attachments::scan(&host.root).unwrap();
        let mut tx = Transaction::new(&host.root.join("journal"));
        let replacing = vec![source.image_str()];
        plan_attach(&host.root, std::slice::from_ref(&source), &reattach, &existing, &replacing, &mut tx).unwrap();
        tx.apply().unwrap();
        tx.commit().unwrap();
        assert!(host.read(dropin).contains("\nRootImagePolicy=root=unprotected:=absent\n"), "{}", host.read(dropin));
        let socket = host.read("etc/systemd/system/foobar.socket.d/20-portable.conf");
        assert!(!socket.contains("ImagePolicy"), "only services have images: {socket}");
        // Pinned now, it is pinned when attached again; a given policy wins.
        let pins = pins_for(&source, &host.root.join("etc/systemd/system"), &protection).unwrap();
        assert_eq!(pins.root.as_deref(), Some("root=unprotected:=absent"));
        source.image_policy = Some("root=unprotected+verity".into());
        let pins = pins_for(&source, &host.root.join("etc/systemd/system"), &protection).unwrap();
        assert_eq!(pins.root.as_deref(), Some("root=unprotected+verity"));
        // File extensions share a derived policy of their own.
        source.derived_extension_policy = Some(DerivedPolicy::of_file_system("erofs"));
        source.extensions =
            vec![Extension { image: "/p/foobar-ext.raw".into(), kind: ImageKind::Erofs, units: Vec::new() }];
        let pins = Pins { root: None, extensions: Some("root=unprotected:=absent".into()) };
        let text = portable_dropin(&source, &source.units[0], false, &pins);
        assert!(text.contains("\nExtensionImagePolicy=root=unprotected:=absent\n"), "{text}");
    }

    #[test]
    fn extensions_are_stacked_in_the_dropin_and_their_paths_checked() {
        let host = Host::new("extensions");
        let mut source = raw("/p/foobar.raw", &["foobar.service", "foobar-ext.service"]);
        source.extensions = vec![
            Extension {
                image: "/p/foobar-ext.raw".into(),
                kind: ImageKind::Squashfs,
                units: vec!["foobar-ext.service".into()],
            },
            Extension { image: "/p/more".into(), kind: ImageKind::Directory, units: Vec::new() },
            Extension { image: "/p/last.raw".into(), kind: ImageKind::Erofs, units: Vec::new() },
        ];
        let dropin = portable_dropin(&source, &source.units[0], false, &Pins::default());
        assert_eq!(
            dropin,
            "# Drop-in created by wharf for image '/p/foobar.raw:/p/foobar-ext.raw:/p/more:/p/last.raw', do not edit.\n\
             [Service]\nRootImage=/p/foobar.raw\nExtensionImages=/p/foobar-ext.raw /p/last.raw\n\
             ExtensionDirectories=/p/more\nEnvironment=PORTABLE=foobar.raw\nLogExtraFields=PORTABLE=foobar.raw\n\
             LogExtraFields=PORTABLE_NAME_AND_VERSION=foobar\nLogExtraFields=PORTABLE_EXTENSION=foobar-ext.raw\n\
             LogExtraFields=PORTABLE_EXTENSION=more\nLogExtraFields=PORTABLE_EXTENSION=last.raw\n"
        );
        // A verity-protected image: its root hash, and a signature of it.
        let mut verity = raw("/p/foobar.raw", &["foobar.service", "foobar.socket"]);
        let hash = "ab".repeat(32);
        verity.verity = Some(VerityPin { root_hash: hash.clone(), signature: Some("MIIB+/a=".into()) });
        let dropin = portable_dropin(&verity, &verity.units[0], false, &Pins::default());
        assert!(
            dropin.contains(&format!(
                "\nRootImage=/p/foobar.raw\nRootHash={hash}\nRootHashSignature=base64:MIIB+/a=\nEnvironment="
            )),
            "{dropin}"
        );
        assert!(!portable_dropin(&verity, &verity.units[1], false, &Pins::default()).contains("RootHash"));
        // A unit of a file extension cannot be linked: it is copied.
        let symlink = host.options(CopyMode::Symlink, false, false);
        let mut dir_source = source.clone();
        (dir_source.image, dir_source.kind) = ("/p/foobar".into(), ImageKind::Directory);
        host.attach(std::slice::from_ref(&dir_source), &symlink).unwrap();
        let units = host.root.join("etc/systemd/system");
        assert!(units.join("foobar.service").is_symlink(), "the directory image's unit is linked");
        assert!(!units.join("foobar-ext.service").is_symlink(), "the file extension's unit is copied");
        for entry in std::fs::read_dir(host.root.join("etc/systemd/system")).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.unwrap();
        }
        // A path that would not read back from ExtensionImages= as written.
        source.extensions[1].image = "/p/two words".into();
        let error =
            host.attach(std::slice::from_ref(&source), &host.options(CopyMode::Copy, false, false)).unwrap_err();
        assert!(error.to_string().contains("extension path '/p/two words' cannot be written"), "{error}");
        let written: Vec<_> = std::fs::read_dir(host.root.join("etc/systemd/system")).unwrap().collect();
        assert!(written.is_empty(), "a refused attach wrote {written:?}");
    }
}
