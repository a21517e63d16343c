//! The portable operations as wharfd runs them: attach, detach, reattach,
//! state and remove, each one transaction of file changes and one systemd
//! reload, and each either done completely or undone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::attachments::{Attachment, Attachments};
use super::install;
use super::plan::{
    AttachOptions, CopyMode, DetachUnit, Extension, SYSTEMD_EXTENSION_DIRECTORIES, Source, add_detach_steps,
    attached_extensions, plan_attach, plan_detach_unit, unit_dir,
};
use super::portabled;
use super::profile::Profile;
use super::view::HostView;
use super::{Error, State};
use crate::executor::Executor;
use crate::image::inspect::{choose_prefixes, image_name, open, read_os_release};
use crate::image::policy::PinLevel;
use crate::image::units::find_units;
use crate::image::{ImageKind, Pool, readonly};
use crate::systemd::manager::UnitManager;
use crate::transaction::{Change, FailedUndo, Transaction, Undo, UnitsOnRollback};

pub type Result<T> = std::result::Result<T, Error>;

/// The host wharf works on: its root (`/`, or a scratch directory in tests),
/// the image pool and the transaction journal.
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    pub pool: Pool,
    pub journal_dir: PathBuf,
}

impl Host {
    /// The real host.
    pub fn system() -> Host {
        Host {
            root: PathBuf::from("/"),
            pool: Pool::portables(),
            journal_dir: PathBuf::from(crate::transaction::JOURNAL_DIR),
        }
    }
}

/// What attach, detach and reattach are asked to do beyond the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    pub runtime: bool,
    pub force: bool,
    pub enable: bool,
    pub now: bool,
    pub no_block: bool,
    /// Files only: systemd loads them at a reload someone else makes.
    pub no_reload: bool,
    /// Detach removes the services' directories as well.
    pub clean: bool,
    /// Plan only: nothing on the host changes (`--check`).
    pub check: bool,
}

impl Actions {
    pub fn from_flags(flags: u64) -> Actions {
        use crate::api::flags::*;
        Actions {
            runtime: flags & RUNTIME != 0,
            force: flags & FORCE != 0,
            enable: flags & ENABLE != 0,
            now: flags & NOW != 0,
            no_block: flags & NO_BLOCK != 0,
            no_reload: flags & NO_RELOAD != 0,
            clean: flags & CLEAN != 0,
            check: flags & CHECK != 0,
        }
    }

    /// Units systemd has not loaded cannot be started.
    fn check(&self) -> Result<()> {
        if self.no_reload && self.now {
            return Err(Error::NoReloadWithNow);
        }
        Ok(())
    }
}

/// One image asked for, with its prefixes (empty: the image's own) and the
/// extension images to stack on it (`--extension`), each a name or a path.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    pub image: String,
    pub prefixes: Vec<String>,
    pub extensions: Vec<String>,
    /// The image policy it must satisfy, and is pinned to when attached.
    pub image_policy: Option<String>,
}

/// What an operation did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Units attached (attach, reattach) or detached (detach).
    pub units: Vec<String>,
    /// Units started, stopped or restarted on the way.
    pub restarted: Vec<String>,
    /// The other images a reattach replaced (the old versions).
    pub replaced: Vec<String>,
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    zruntime::unblock(work).await
}

/// Progress of a long step (xz decompression): bytes done, bytes in all.
pub type ProgressFn = Box<dyn FnMut(u64, u64) + Send>;

/// Reads one image into an attach [`Source`]: locate, recognise (an xz
/// image is decompressed into the pool first, once), read its os-release
/// and the units matching its prefixes.
pub fn read_source(host: &Host, request: &ImageRequest, progress: &mut ProgressFn) -> Result<Source> {
    read_source_as(host, request, progress, XzHandling::IntoPool, None)
}

/// What [`read_source`] would give, without writing anything: an xz image
/// not decompressed into the pool yet is read from an anonymous file, and
/// named by the path it will have in the pool.
pub fn preview_source(host: &Host, request: &ImageRequest, progress: &mut ProgressFn) -> Result<Source> {
    read_source_as(host, request, progress, XzHandling::Anonymous, None)
}

/// [`read_source`] (or with `preview`, [`preview_source`]) of an image
/// whose file must have the sha256 `pin`: the digest is that of the bytes
/// read through the one descriptor the image is opened with (for an xz
/// image, those decompressed, or those matching the pool copy used).
pub fn read_pinned_source(
    host: &Host,
    request: &ImageRequest,
    pin: &str,
    preview: bool,
    progress: &mut ProgressFn,
) -> Result<Source> {
    let xz = if preview { XzHandling::Anonymous } else { XzHandling::IntoPool };
    read_source_as(host, request, progress, xz, Some(pin))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XzHandling {
    IntoPool,
    Anonymous,
}

/// An image located, opened once and recognised.
struct Located {
    path: PathBuf,
    file: std::fs::File,
    kind: ImageKind,
}

/// Locates `image` and opens it: what is recognised, hashed and read is
/// this one file, whatever happens to the path meanwhile. An xz image is
/// decompressed as `xz` says, and is then the raw file it decompressed to.
fn locate_open(
    host: &Host,
    image: &str,
    progress: &mut ProgressFn,
    xz: XzHandling,
    pin: Option<&str>,
) -> Result<Located> {
    use crate::image::xz;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let located = host.pool.locate_image(image, None)?;
    let mut path = std::path::absolute(&located).map_err(io(&located))?;
    let mut file = std::fs::File::open(&path).map_err(io(&path))?;
    let mut kind = ImageKind::detect_open(&file, &path)?;
    match kind {
        ImageKind::Xz => {
            let compressed = file;
            let pooled = match xz {
                XzHandling::IntoPool => {
                    Some(xz::decompress_to_pool(&path, &compressed, host.pool.home(), pin, &mut *progress)?)
                }
                XzHandling::Anonymous => xz::pooled(&path, &compressed, host.pool.home(), pin)?,
            };
            match pooled {
                Some(pooled) => {
                    // wharf's own file in the pool, made from the bytes hashed.
                    file = std::fs::File::open(&pooled.path).map_err(io(&pooled.path))?;
                    kind = ImageKind::detect_open(&file, &pooled.path)?;
                    path = pooled.path;
                }
                None => {
                    let dirs = xz::anonymous_dirs();
                    let raw = xz::decompress_anonymous(&path, &compressed, &dirs, None, &mut *progress)?;
                    xz::check_pin(&path, &raw.sha256, pin)?;
                    (file, kind) = (raw.file, raw.kind);
                    path = host.pool.home().join(xz::target_name(&path)?);
                }
            }
        }
        ImageKind::Directory if pin.is_some() => {
            return Err(crate::image::Error::DigestOfDirectory(path).into());
        }
        _ => {
            if pin.is_some() {
                xz::check_pin(&path, &xz::sha256_of(&path, &file)?, pin)?;
            }
        }
    }
    Ok(Located { path, file, kind })
}

fn read_source_as(
    host: &Host,
    request: &ImageRequest,
    progress: &mut ProgressFn,
    xz: XzHandling,
    pin: Option<&str>,
) -> Result<Source> {
    use crate::image::extension::{merge_units, read_extension};
    let Located { path, file, kind } = locate_open(host, &request.image, progress, xz, pin)?;
    let name = image_name(&path)?;
    // Derived from the descriptor whose bytes are read (and were hashed).
    let derived_policy = match request.image_policy {
        Some(_) => None,
        None => derive_image_policy(&path, kind, &file)?,
    };
    let verity = match kind {
        ImageKind::Gpt => verity_pin(&path, &file)?,
        _ => None,
    };
    let mut opened = open(&path, file, kind)?;
    let os_release = read_os_release(&path, opened.tree.as_mut())?;
    let prefixes = choose_prefixes(&path, &name, &request.prefixes, &os_release)?;
    let mut units = find_units(opened.tree.as_mut(), &prefixes)
        .map_err(|source| crate::image::Error::Unit { image: path.clone(), source })?;
    let image_policy = match &request.image_policy {
        Some(text) => Some(check_image_policy(&path, kind, &opened.partitions, text)?),
        None => None,
    };
    drop(opened);
    let mut extensions: Vec<Extension> = Vec::new();
    let mut extension_policies = Vec::new();
    for wanted in &request.extensions {
        let ext = locate_open(host, wanted, progress, xz, None)?;
        if ext.path == path || extensions.iter().any(|e| e.image == ext.path) {
            let extension = ext.path.display().to_string();
            return Err(Error::DuplicateExtension { image: path.display().to_string(), extension });
        }
        extension_policies.extend(derive_image_policy(&ext.path, ext.kind, &ext.file)?);
        let reading = crate::image::inspect::Reading::privileged();
        let found = read_extension(&path, &os_release, &prefixes, &ext.path, ext.file, ext.kind, &reading)?;
        let added = merge_units(&mut units, found);
        extensions.push(Extension { image: ext.path, kind: ext.kind, units: added });
    }
    let derived_extension_policy = crate::image::policy::DerivedPolicy::union(&extension_policies);
    Ok(Source { image: path, kind, units, extensions, image_policy, derived_policy, derived_extension_policy, verity })
}

/// The root hash of a GPT image whose root (or /usr) partition has a
/// verity partition beside it, once every block of the partition has been
/// checked against it: the attachment is pinned to it (`RootHash=`), so a
/// tampered image is refused now, and one changed or swapped later does
/// not open for the service. The signature partition's signature goes
/// along where it signs that root hash (systemd checks it when it opens
/// the image).
fn verity_pin(path: &Path, file: &std::fs::File) -> Result<Option<crate::portable::plan::VerityPin>> {
    use crate::image::verity;
    let file = std::sync::Arc::new(file.try_clone().map_err(crate::image::Error::io(path))?);
    let layout = crate::image::gpt::layout(path, &file)?;
    let Some(protected) = verity::find(path, &file, &layout, None)? else {
        return Ok(None);
    };
    verity::verify(path, &file, &protected)?;
    let signature =
        protected.signature.as_ref().filter(|s| s.root_hash == protected.root_hash).map(|s| s.signature.clone());
    tracing::debug!(image = %path.display(), root_hash = protected.root_hash_hex(), source = %protected.source, "verity checked");
    Ok(Some(crate::portable::plan::VerityPin { root_hash: protected.root_hash_hex(), signature }))
}

/// The image policy a file image satisfies as it is, which its attachment
/// is pinned to when no policy is given; none for a directory, which
/// systemd does not dissect.
fn derive_image_policy(
    path: &Path,
    kind: ImageKind,
    file: &std::fs::File,
) -> Result<Option<crate::image::policy::DerivedPolicy>> {
    use crate::image::policy::DerivedPolicy;
    Ok(match kind {
        ImageKind::Squashfs | ImageKind::Ext4 | ImageKind::Erofs => Some(DerivedPolicy::of_file_system(kind.as_str())),
        ImageKind::Gpt => Some(crate::image::gpt::derived_policy(path, file)?),
        ImageKind::Directory | ImageKind::Xz => None,
    })
}

/// Checks an image against a policy as systemd would when it dissects the
/// image for the service, and returns the policy to pin it to. A file
/// system image is one root partition without protection; a GPT image's
/// partitions are checked by their designators, a root or usr partition
/// with a verity partition beside it as `verity` (with a signature
/// partition, `signed`).
fn check_image_policy(
    path: &Path,
    kind: ImageKind,
    partitions: &[crate::image::inspect::Partition],
    text: &str,
) -> Result<String> {
    use crate::image::policy::ImagePolicy;
    let policy = ImagePolicy::parse(text)?;
    let image = path.display().to_string();
    if !kind.is_file() {
        return Err(Error::ImagePolicyOnDirectory(image));
    }
    let refused = |why: String| Error::ImagePolicyRefuses { image: image.clone(), policy: text.to_string(), why };
    if partitions.is_empty() {
        if let Some(why) = policy.refuses("root", "unprotected", Some(kind.to_string().as_str())) {
            return Err(refused(why));
        }
        return Ok(policy.as_str().to_string());
    }
    let roles: Vec<&str> = partitions.iter().map(|p| p.role.as_str()).collect();
    if let Some(why) = policy.refuses_partitions(&roles, true) {
        return Err(refused(why));
    }
    Ok(policy.as_str().to_string())
}

/// Refuses an image policy where systemd cannot pin to it.
async fn check_image_policy_support(systemd: &impl UnitManager, requests: &[ImageRequest]) -> Result<()> {
    use crate::image::policy::{FILE_SYSTEMS_SINCE, ROOT_IMAGE_POLICY_SINCE};
    if requests.iter().all(|r| r.image_policy.is_none()) {
        return Ok(());
    }
    let version = systemd.version().await?;
    if version < ROOT_IMAGE_POLICY_SINCE {
        return Err(Error::ImagePolicyUnsupported(version));
    }
    for text in requests.iter().filter_map(|r| r.image_policy.as_deref()) {
        let policy = crate::image::policy::ImagePolicy::parse(text)?;
        if policy.names_file_systems() && version < FILE_SYSTEMS_SINCE {
            return Err(Error::ImagePolicyFileSystems { policy: text.to_string(), version });
        }
    }
    Ok(())
}

/// How much of a derived image policy the host's systemd reads.
pub async fn pin_level(systemd: &impl UnitManager) -> Result<PinLevel> {
    Ok(PinLevel::for_systemd(systemd.version().await?))
}

/// The source of a request: read (an xz image decompressed into the pool),
/// or for a plan only previewed, with nothing written.
fn source_for(host: &Host, request: &ImageRequest, progress: &mut ProgressFn, check: bool) -> Result<Source> {
    if check { preview_source(host, request, progress) } else { read_source(host, request, progress) }
}

/// Whether attach drop-ins bind the host's os-release themselves: only for
/// a systemd that does not provide it.
pub async fn binds_os_release(systemd: &impl UnitManager) -> Result<bool> {
    Ok(systemd.version().await? < crate::portable::plan::SYSTEMD_PROVIDES_HOST_OS_RELEASE)
}

/// Refuses directory extensions when systemd cannot stack them
/// (`ExtensionDirectories=` is newer than `ExtensionImages=`).
async fn check_extension_support(host: &Host, systemd: &impl UnitManager, requests: &[ImageRequest]) -> Result<()> {
    if requests.iter().all(|r| r.extensions.is_empty()) {
        return Ok(());
    }
    let version = systemd.version().await?;
    if version >= SYSTEMD_EXTENSION_DIRECTORIES {
        return Ok(());
    }
    for request in requests {
        for extension in &request.extensions {
            // One that cannot be located is named by the read that follows.
            let Ok(path) = host.pool.locate_image(extension, None) else { continue };
            if path.is_dir() {
                return Err(Error::ExtensionDirectoriesUnsupported(path.display().to_string(), version));
            }
        }
    }
    Ok(())
}

/// Units that can be started or enabled on their own (not templates).
fn startable(units: &[String]) -> Vec<String> {
    units.iter().filter(|u| !u.contains("@.")).cloned().collect()
}

/// Attaches images (one or a batch) with one transaction and one reload.
pub async fn attach(
    host: &Host,
    systemd: &impl UnitManager,
    requests: Vec<ImageRequest>,
    profile: &str,
    copy: CopyMode,
    actions: Actions,
    progress: ProgressFn,
) -> Result<Outcome> {
    Ok(attach_owned(host, systemd, requests, profile, copy, actions, progress).await?.0)
}

/// [`attach`] of requests from several callers in one transaction with one
/// reload, all or none: an outcome per request, with its own units and
/// changes.
pub async fn attach_each(
    host: &Host,
    systemd: &impl UnitManager,
    requests: Vec<ImageRequest>,
    profile: &str,
    copy: CopyMode,
    actions: Actions,
    progress: ProgressFn,
) -> Result<Vec<Outcome>> {
    let (outcome, owned) = attach_owned(host, systemd, requests, profile, copy, actions, progress).await?;
    Ok(split_outcome(outcome, &owned))
}

/// The units one request of a batch attached or detached, and its image.
struct Owned {
    image: String,
    units: Vec<String>,
}

/// One outcome per request of a batch: its units, the units it started or
/// stopped, and the changes of files of its units (or of its image's
/// search-path link); a change of none of them (a directory all share) is
/// the first request's.
fn split_outcome(outcome: Outcome, owned: &[Owned]) -> Vec<Outcome> {
    let owner_of = |path: &Path| {
        let of_unit = |unit: &String| {
            let dropins = format!("{unit}.d");
            path.components().any(|c| c.as_os_str() == unit.as_str() || c.as_os_str() == dropins.as_str())
        };
        owned
            .iter()
            .position(|o| o.units.iter().any(of_unit))
            .or_else(|| owned.iter().position(|o| Path::new(&o.image).file_name() == path.file_name()))
            .unwrap_or(0)
    };
    let mut outcomes: Vec<Outcome> = owned
        .iter()
        .map(|o| Outcome {
            changes: Vec::new(),
            units: o.units.clone(),
            restarted: outcome.restarted.iter().filter(|u| o.units.contains(u)).cloned().collect(),
            replaced: Vec::new(),
        })
        .collect();
    if outcomes.is_empty() {
        return vec![outcome];
    }
    for change in outcome.changes {
        outcomes[owner_of(Path::new(&change.path))].changes.push(change);
    }
    outcomes
}

async fn attach_owned(
    host: &Host,
    systemd: &impl UnitManager,
    requests: Vec<ImageRequest>,
    profile: &str,
    copy: CopyMode,
    actions: Actions,
    mut progress: ProgressFn,
) -> Result<(Outcome, Vec<Owned>)> {
    actions.check()?;
    check_extension_support(host, systemd, &requests).await?;
    check_image_policy_support(systemd, &requests).await?;
    let planning_host = host.clone();
    let profile = profile.to_string();
    let bind_os_release = binds_os_release(systemd).await?;
    let pin = pin_level(systemd).await?;
    let (tx, units, unchanged, owned) = blocking(move || -> Result<_> {
        let host = planning_host;
        let sources =
            requests.iter().map(|r| source_for(&host, r, &mut progress, actions.check)).collect::<Result<Vec<_>>>()?;
        let owned: Vec<Owned> = sources
            .iter()
            .map(|s| Owned { image: s.image_str(), units: s.units.iter().map(|u| u.name.clone()).collect() })
            .collect();
        let options = AttachOptions {
            profile: Profile::find(&host.root, &profile)?,
            copy,
            runtime: actions.runtime,
            force: actions.force,
            bind_os_release,
            pin,
            keep_unpinned: true,
        };
        let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
        let mut tx = Transaction::new(&host.journal_dir);
        let units = plan_attach(&host.root, &sources, &options, &existing, &[], &mut tx)?;
        if actions.enable {
            add_enable_steps(&unit_dir(&host.root, actions.runtime), &sources, &mut tx)?;
        }
        if actions.now {
            tx.on_rollback(UnitsOnRollback { stop: startable(&units), ..UnitsOnRollback::default() });
        }
        // An image attached already is attached again only exactly as it
        // is (then there is nothing to do); any other change of it is a
        // reattach, which restarts what runs on it.
        // In a batch, each image attached already is judged by its own
        // files (its units, their drop-ins and links).
        let mut attached_already = 0;
        for source in sources.iter().filter(|s| existing.of(&s.image_str()).next().is_some()) {
            attached_already += 1;
            let own = |path: &Path| {
                // portablectl's view of the attachment is not part of it: an
                // attachment made before wharf wrote mirrors gets its mirror
                // by being attached again.
                let mirrored =
                    [false, true].iter().any(|&rt| path.starts_with(portabled::attached_dir(&host.root, rt)));
                if mirrored {
                    return false;
                }
                let names = [path.file_name(), path.parent().and_then(|p| p.file_name())];
                source.units.iter().any(|unit| {
                    let dropins = format!("{}.d", unit.name);
                    names.iter().flatten().any(|n| *n == unit.name.as_str() || *n == dropins.as_str())
                })
            };
            if let Some(differs) = tx.first_difference_where(own) {
                return Err(Error::AlreadyAttached { image: source.image_str(), differs });
            }
        }
        let unchanged = attached_already == sources.len() && tx.first_difference().is_none();
        if attached_already > 0 {
            tx.skip_unchanged();
        }
        Ok((tx, units, unchanged, owned))
    })
    .await?;
    let started = if actions.now { startable(&units) } else { Vec::new() };
    if actions.check {
        let changes = if unchanged { Vec::new() } else { tx.preview() };
        return Ok((Outcome { changes, units, restarted: started, replaced: Vec::new() }, owned));
    }
    if unchanged {
        tracing::info!(units = ?units, "attached already, exactly so: nothing to do");
        if !started.is_empty() {
            systemd.start(&started, !actions.no_block).await?;
        }
        return Ok((Outcome { changes: Vec::new(), units, restarted: started, replaced: Vec::new() }, owned));
    }

    let mut change = Executor::new(systemd);
    let result = async {
        let changes = change.apply(tx).await?;
        crate::daemon::watchdog::test_wedge("after-files");
        if !actions.no_reload {
            change.reload().await?;
        }
        change.start(&started, !actions.no_block).await?;
        Ok(changes)
    }
    .await;
    let changes = conclude(change, result, "attach").await?;
    tracing::info!(units = ?units, "attached");
    Ok((Outcome { changes, units, restarted: started, replaced: Vec::new() }, owned))
}

/// Commits a change whose steps all worked, or undoes one that failed: the
/// error then says whether the host is as it was, or which undo steps failed.
async fn conclude<T>(change: Executor<'_, impl UnitManager>, result: Result<T>, during: &'static str) -> Result<T> {
    match result {
        Ok(value) => {
            change.commit().await?;
            Ok(value)
        }
        Err(error) => {
            let mut undo = Undo::new(during);
            change.roll_back(&mut undo).await;
            Err(Error::rolled_back(error, undo))
        }
    }
}

/// Finishes, with systemd, a crash recovery that rolled files back: the
/// units the interrupted changes started are stopped, systemd reloads, and
/// the units they had stopped or restarted run again. Returns what failed.
pub async fn settle_recovery(systemd: &impl UnitManager, units: &UnitsOnRollback) -> Vec<FailedUndo> {
    let mut undo = Undo::new("an interrupted change");
    // Only what still runs: a unit whose files are gone and that is not
    // running is not loaded any more, and stopping it would fail.
    match active_units(systemd, &units.stop).await {
        Ok(active) => {
            let running: Vec<String> = active.into_iter().map(|(unit, _)| unit).collect();
            undo.step("stopping the units it started", systemd.stop(&running, true).await);
        }
        Err(e) => undo.step("stopping the units it started", Err::<(), _>(e)),
    }
    undo.step("reloading systemd", systemd.reload().await);
    // Queued, not waited for: wharfd answers no call until recovery is
    // done, and how the units fare afterwards is theirs to report.
    undo.step("restarting the units it had stopped", systemd.restart(&units.restart, false).await);
    undo.finish()
}

/// Adds the links that enable the units of `sources` (templates are never
/// enabled) in `dest` to `tx`, after the unit files: a link never points to
/// a unit that is not there yet.
pub(crate) fn add_enable_steps(dest: &Path, sources: &[Source], tx: &mut Transaction) -> Result<()> {
    for unit in sources.iter().flat_map(|s| &s.units).filter(|u| !u.name.contains("@.")) {
        install::add_enable_steps(dest, &unit.name, &unit.contents, tx)?;
    }
    Ok(())
}

/// Adds the removal of every enablement link of `units` (in /etc or /run,
/// whoever made it) to `tx`: detaching disables, in the same transaction.
pub(crate) fn add_unlink_steps(root: &Path, units: &[String], tx: &mut Transaction) {
    let dirs = [unit_dir(root, false), unit_dir(root, true)];
    for unit in units {
        for link in install::links_of(&dirs, unit) {
            tx.remove(link);
        }
    }
}

/// `error`, unless it says `image` is not attached and portabled attached
/// it: then that it is portabled's to detach.
fn theirs_or(host: &Host, image: &str, error: Error) -> Error {
    if !matches!(error, Error::NotAttached(_)) {
        return error;
    }
    match portabled::scan(&host.root) {
        Ok(theirs) => theirs_among(host, theirs, image, error),
        Err(source) => Error::Io { path: portabled::attached_dir(&host.root, false), source },
    }
}

/// [`theirs_or`] among portabled's attachments scanned already.
fn theirs_among(host: &Host, theirs: Vec<Attachment>, image: &str, error: Error) -> Error {
    if !matches!(error, Error::NotAttached(_)) {
        return error;
    }
    match attachments_among(host, Attachments(theirs), image) {
        Ok((path, _)) => Error::PortabledAttachment(path),
        Err(_) => error,
    }
}

/// [`attachments_of`] among attachments scanned already. An attachment is
/// found by the path it was attached from, by the path the name locates
/// in the search path, by its file name with or without `.raw`, and, for a
/// decompressed copy, by the `.raw.xz` it was made from (path or file name).
fn attachments_among(host: &Host, existing: Attachments, image: &str) -> Result<(String, Vec<Attachment>)> {
    let (located, names_it) = path_matcher(host, image);
    let mut sources: HashMap<String, Option<String>> = HashMap::new();
    let mut matches = |a: &Attachment| {
        names_it(&a.image)
            || sources
                .entry(a.image.clone())
                .or_insert_with(|| crate::image::xz::source_of(Path::new(&a.image)).map(|record| record.path))
                .as_deref()
                .is_some_and(&names_it)
    };
    let found: Vec<Attachment> = existing.0.into_iter().filter(|a| matches(a)).collect();
    match found.first() {
        Some(first) => Ok((first.image.clone(), found)),
        None => Err(Error::NotAttached(located.unwrap_or_else(|| image.to_string()))),
    }
}

/// The path `image` (a name or a path) locates in the search path, if any,
/// and whether an attached path is what `image` names: that path, `image`
/// itself, or (for a bare name) a file of that name, with or without `.raw`.
fn path_matcher(host: &Host, image: &str) -> (Option<String>, impl Fn(&str) -> bool + use<>) {
    let located = host
        .pool
        .locate_image(image, None)
        .ok()
        .and_then(|p| std::path::absolute(p).ok())
        .map(|p| p.display().to_string());
    let (wanted, image) = (located.clone(), image.to_string());
    let names_it = move |path: &str| {
        Some(path) == wanted.as_deref() || path == image || {
            let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            !image.contains('/')
                && (name == image || ["", ".raw", ".raw.xz"].iter().any(|suffix| name == format!("{image}{suffix}")))
        }
    };
    (located, names_it)
}

/// The attachments among `found` (of `image`) made with exactly
/// `extensions`, in that order, each named as an image is (a path, a name
/// in the search path, a file name, or the `.raw.xz` a copy was made
/// from); without `extensions`, all of them. None matching is an error
/// that says which extensions the image is attached with.
fn matching_extensions(
    host: &Host,
    found: Vec<Attachment>,
    image: &str,
    extensions: &[String],
) -> Result<Vec<Attachment>> {
    matching_extensions_by(host, found, image, extensions, &|a| attached_extensions(&host.root, a))
}

/// [`matching_extensions`], with the extensions of each attachment as
/// `extensions_of` says.
fn matching_extensions_by(
    host: &Host,
    found: Vec<Attachment>,
    image: &str,
    extensions: &[String],
    extensions_of: &dyn Fn(&Attachment) -> Result<Vec<String>>,
) -> Result<Vec<Attachment>> {
    if extensions.is_empty() {
        return Ok(found);
    }
    let (located, matchers): (Vec<_>, Vec<_>) = extensions
        .iter()
        .map(|e| {
            let (located, matcher) = path_matcher(host, e);
            (located.unwrap_or_else(|| e.clone()), matcher)
        })
        .unzip();
    let names = |matcher: &dyn Fn(&str) -> bool, path: &str| {
        matcher(path) || crate::image::xz::source_of(Path::new(path)).is_some_and(|record| matcher(&record.path))
    };
    let mut matching = Vec::new();
    let mut attached_with = Vec::new();
    for attachment in found {
        let attached = extensions_of(&attachment)?;
        if attached.len() == matchers.len() && attached.iter().zip(&matchers).all(|(path, m)| names(m, path)) {
            matching.push(attachment);
        } else {
            attached_with = attached;
        }
    }
    if matching.is_empty() {
        let list = |paths: &[String]| {
            if paths.is_empty() {
                "(none)".to_string()
            } else {
                paths.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ")
            }
        };
        return Err(Error::OtherExtensions {
            image: image.to_string(),
            attached: list(&attached_with),
            wanted: list(&located),
        });
    }
    Ok(matching)
}

/// The attachments among `found` whose units match `prefixes` (all of
/// them without prefixes); none matching is an error naming the prefixes.
fn matching_prefixes(found: Vec<Attachment>, image: &str, prefixes: &[String]) -> Result<Vec<Attachment>> {
    if prefixes.is_empty() {
        return Ok(found);
    }
    let matching: Vec<Attachment> = found
        .into_iter()
        .filter(|a| prefixes.iter().any(|p| crate::image::name::unit_matches_prefix(&a.unit, p)))
        .collect();
    if matching.is_empty() {
        return Err(Error::NoUnitsMatch { image: image.to_string(), prefixes: prefixes.join(", ") });
    }
    Ok(matching)
}

async fn active_units(systemd: &impl UnitManager, units: &[String]) -> Result<Vec<(String, String)>> {
    Ok(systemd
        .unit_states(units)
        .await?
        .into_iter()
        .filter(|s| s.is_active())
        .map(|s| (s.name, s.active_state))
        .collect())
}

/// Detaches an image, as a batch of one: its running units are refused
/// unless `now`, which stops them (or `force`, which leaves them running
/// without their files); enablement links are removed with the files, in
/// one transaction. With `prefixes`, only the units matching them.
pub async fn detach(
    host: &Host,
    systemd: &impl UnitManager,
    image: &str,
    prefixes: &[String],
    actions: Actions,
) -> Result<Outcome> {
    let request = ImageRequest { image: image.to_string(), prefixes: prefixes.to_vec(), ..Default::default() };
    detach_requests(host, systemd, vec![request], actions).await
}

/// [`detach`] of an image attached with `extensions` (empty: with any):
/// an attachment with other extensions is not found.
pub async fn detach_with_extensions(
    host: &Host,
    systemd: &impl UnitManager,
    request: ImageRequest,
    actions: Actions,
) -> Result<Outcome> {
    detach_requests(host, systemd, vec![request], actions).await
}

/// Detaches several images with one transaction and one reload: all or
/// none. Every image is planned (from one scan of the unit directories)
/// before any unit is stopped, so one that is not attached, or a running
/// unit without `now`, fails the whole batch with nothing changed. An image
/// named twice is detached once.
pub async fn detach_batch(
    host: &Host,
    systemd: &impl UnitManager,
    images: Vec<String>,
    actions: Actions,
) -> Result<Outcome> {
    let requests =
        images.into_iter().map(|image| ImageRequest { image, prefixes: Vec::new(), ..Default::default() }).collect();
    detach_requests(host, systemd, requests, actions).await
}

/// [`detach_batch`] of requests from several callers (each with its own
/// prefixes): an outcome per request, with its own units and changes.
pub async fn detach_each(
    host: &Host,
    systemd: &impl UnitManager,
    requests: Vec<ImageRequest>,
    actions: Actions,
) -> Result<Vec<Outcome>> {
    let (outcome, owned) = detach_owned(host, systemd, requests, actions).await?;
    Ok(split_outcome(outcome, &owned))
}

async fn detach_requests(
    host: &Host,
    systemd: &impl UnitManager,
    images: Vec<ImageRequest>,
    actions: Actions,
) -> Result<Outcome> {
    Ok(detach_owned(host, systemd, images, actions).await?.0)
}

async fn detach_owned(
    host: &Host,
    systemd: &impl UnitManager,
    images: Vec<ImageRequest>,
    actions: Actions,
) -> Result<(Outcome, Vec<Owned>)> {
    actions.check()?;
    let plan_host = host.clone();
    let (owners, units, tx, owned) = blocking(move || -> Result<_> {
        let host = plan_host;
        let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut attachments: Vec<Attachment> = Vec::new();
        let mut owned: Vec<Owned> = Vec::new();
        for request in &images {
            let (path, found) = attachments_among(&host, existing.clone(), &request.image)
                .map_err(|error| theirs_or(&host, &request.image, error))?;
            let found = matching_extensions(&host, found, &path, &request.extensions)?;
            let found = matching_prefixes(found, &path, &request.prefixes)?;
            owned.push(Owned { image: path.clone(), units: found.iter().map(|a| a.unit.clone()).collect() });
            for attachment in found {
                if owners.insert(attachment.unit.clone(), path.clone()).is_none() {
                    attachments.push(attachment);
                }
            }
        }
        let units: Vec<String> = attachments.iter().map(|a| a.unit.clone()).collect();
        let plans = attachments.iter().map(|a| plan_detach_unit(&host.root, a)).collect::<Result<Vec<_>>>()?;
        report_kept(&plans);
        let mut tx = Transaction::new(&host.journal_dir);
        // Links first: none ever points to a unit already removed.
        add_unlink_steps(&host.root, &units, &mut tx);
        add_detach_steps(&plans, &mut tx);
        // The search-path link portablectl reads goes with the image's last unit.
        let mut images: Vec<&String> = owners.values().collect();
        images.sort();
        images.dedup();
        for image in images {
            let staying = existing.of(image).any(|a| !owners.contains_key(&a.unit));
            if let Some(link) = portabled::image_link(&host.root, Path::new(image)).filter(|_| !staying) {
                tx.remove(link);
            }
        }
        Ok((owners, units, tx, owned))
    })
    .await?;

    let active = active_units(systemd, &units).await?;
    // --clean needs the units down: --force alone leaves them running.
    if let Some((unit, state)) = active.first()
        && !actions.now
        && (!actions.force || actions.clean)
    {
        let image = owners.get(unit).cloned().unwrap_or_default();
        return Err(Error::Running { unit: unit.clone(), image, state: state.clone() });
    }
    let cleaned = if actions.clean { cleanable(systemd, &units, &owners).await? } else { Vec::new() };
    if actions.check {
        let stopping = if actions.now { active.into_iter().map(|(unit, _)| unit).collect() } else { Vec::new() };
        return Ok((Outcome { changes: tx.preview(), units, restarted: stopping, replaced: Vec::new() }, owned));
    }
    // Loaded until cleaned: a stopped unit whose file is gone is otherwise
    // unloaded, and systemd would not know its directories any more.
    systemd.pin(&cleaned).await?;
    // --force without --now: they go on running without their files, as
    // under portablectl, until they stop.
    let stopped: Vec<String> =
        if actions.now { active.into_iter().map(|(unit, _)| unit).collect() } else { Vec::new() };
    let mut change = Executor::new(systemd);
    let result = async {
        let mut tx = tx;
        // Journaled before the units stop, so that a crash at any point
        // after it is recovered with them running again. systemd sees the
        // removed files only at the reload, after the stop.
        tx.on_rollback(UnitsOnRollback { restart: stopped.clone(), ..UnitsOnRollback::default() });
        let changes = change.apply(tx).await?;
        change.stop(&stopped).await?;
        // Still loaded with their directories: systemd sees the removed
        // unit files only at the reload below. Removing the directories
        // cannot be undone, so it is the last step before that reload
        // (which it must precede: after it, systemd knows no directories).
        change.systemd().clean(&cleaned).await?;
        if !actions.no_reload {
            change.reload().await?;
        }
        Ok(changes)
    }
    .await;
    let concluded = conclude(change, result, "detach").await;
    if let Err(e) = systemd.unpin(&cleaned).await {
        tracing::warn!(units = ?cleaned, "cannot release the units cleaned: {e}");
    }
    let changes = concluded?;
    let images: std::collections::BTreeSet<&String> = owners.values().collect();
    tracing::info!(?images, units = ?units, "detached");
    Ok((Outcome { changes, units, restarted: stopped, replaced: Vec::new() }, owned))
}

/// The services among `units` whose directories `--clean` removes, once
/// each is known to name only directories of its own image: a hostile
/// image's `StateDirectory=systemd` must not cost the host /var/lib/systemd.
async fn cleanable(
    systemd: &impl UnitManager,
    units: &[String],
    owners: &HashMap<String, String>,
) -> Result<Vec<String>> {
    let mut services = Vec::new();
    // A template has no directories until an instance of it is loaded.
    for unit in units.iter().filter(|u| u.ends_with(".service") && !u.contains("@.")) {
        let image = owners.get(unit).cloned().unwrap_or_default();
        let prefix = image_name(Path::new(&image)).map(|n| n.prefix().to_string()).unwrap_or_default();
        for (setting, directory) in systemd.service_directories(unit).await? {
            if !directory_of(&directory, &prefix, unit) {
                return Err(Error::ForeignDirectory { unit: unit.clone(), image, setting, directory });
            }
        }
        services.push(unit.clone());
    }
    Ok(services)
}

/// Whether `directory` (relative, as in `StateDirectory=`) is named after
/// the image (`prefix`) or the unit: its first component is the name, or
/// the name followed by `-`, `.`, `@` or `_` and more.
pub fn directory_of(directory: &str, prefix: &str, unit: &str) -> bool {
    let Some(first) = directory.split('/').find(|c| !c.is_empty()) else { return false };
    if directory.starts_with('/') || directory.split('/').any(|c| c == ".." || c == ".") {
        return false;
    }
    let stem = unit.rsplit_once('.').map_or(unit, |(stem, _)| stem);
    let stem = stem.split_once('@').map_or(stem, |(stem, _)| stem);
    let named_after = |name: &str| {
        !name.is_empty()
            && first.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', '@', '_']))
    };
    named_after(prefix) || named_after(stem)
}

fn report_kept(plans: &[DetachUnit]) {
    for plan in plans {
        for path in &plan.kept {
            tracing::warn!(unit = plan.unit, path = %path.display(), "not written by wharf, left in place");
        }
    }
}

/// Replaces the attached version of an image by a new one: the new units
/// are attached, old units the new image no longer has are detached, and
/// units that were running are restarted on the new image. If anything
/// fails, the old attachment is put back as it was, running again.
pub async fn reattach(
    host: &Host,
    systemd: &impl UnitManager,
    request: ImageRequest,
    profile: &str,
    copy: CopyMode,
    actions: Actions,
    progress: ProgressFn,
) -> Result<Outcome> {
    let mut results = reattach_each(host, systemd, vec![request], profile, copy, actions, progress).await?;
    match results.pop().flatten() {
        Some(result) => result,
        None => unreachable!("a reattach alone overlaps no other"),
    }
}

/// A reattach's steps, and what they do.
type PlannedReattach = (Transaction, ReattachPlan);

/// One request's part of a (grouped) reattach, planned on its own.
struct ReattachPlan {
    image: String,
    /// The new image's units.
    units: Vec<String>,
    /// The old version's attachments (units of the same names, or of an
    /// image with the same name prefix, or of this image).
    old: Vec<Attachment>,
    /// Old units the new image does not bring.
    dropped: Vec<String>,
    replaced: Vec<String>,
}

impl ReattachPlan {
    /// Every unit and image the plan touches: two plans that share one
    /// cannot be applied as one transaction.
    fn touches(&self) -> impl Iterator<Item = &String> {
        self.units.iter().chain(self.old.iter().flat_map(|a| [&a.unit, &a.image])).chain(std::iter::once(&self.image))
    }
}

fn plan_reattach(
    host: &Host,
    request: &ImageRequest,
    existing: &Attachments,
    (profile, copy, actions, bind_os_release, pin): (&str, CopyMode, Actions, bool, PinLevel),
    progress: &mut ProgressFn,
) -> Result<(Transaction, ReattachPlan)> {
    let source = source_for(host, request, progress, actions.check)?;
    let new_prefix = image_name(&source.image)?.prefix().to_string();
    // The old version: whatever image holds units of the same names, or
    // an attached image with the same name prefix; or this image itself,
    // attached with other settings (its units restart in the new sandbox).
    let old_images: Vec<String> = {
        let mut images: Vec<String> = existing
            .0
            .iter()
            .filter(|a| {
                source.units.iter().any(|u| u.name == a.unit)
                    || image_name(Path::new(&a.image)).is_ok_and(|n| n.prefix() == new_prefix)
            })
            .map(|a| a.image.clone())
            .collect();
        images.sort();
        images.dedup();
        images
    };
    let old: Vec<Attachment> = existing.0.iter().filter(|a| old_images.contains(&a.image)).cloned().collect();
    let runtime = old.first().map_or(actions.runtime, |a| a.runtime);
    let options = AttachOptions {
        profile: Profile::find(&host.root, profile)?,
        copy,
        runtime,
        force: actions.force,
        bind_os_release,
        // A reattach pins an attachment made unpinned.
        pin,
        keep_unpinned: false,
    };
    let mut tx = Transaction::new(&host.journal_dir);
    // Old units the new image does not bring go, disabled first; the
    // others are rewritten by the attach steps.
    let dropped: Vec<DetachUnit> = old
        .iter()
        .filter(|a| !source.units.iter().any(|u| u.name == a.unit))
        .map(|a| plan_detach_unit(&host.root, a))
        .collect::<Result<_>>()?;
    report_kept(&dropped);
    add_unlink_steps(&host.root, &dropped.iter().map(|d| d.unit.clone()).collect::<Vec<_>>(), &mut tx);
    add_detach_steps(&dropped, &mut tx);
    let units = plan_attach(&host.root, std::slice::from_ref(&source), &options, existing, &old_images, &mut tx)?;
    if actions.enable {
        add_enable_steps(&unit_dir(&host.root, runtime), std::slice::from_ref(&source), &mut tx)?;
    }
    let replaced: Vec<String> = old_images.iter().filter(|i| **i != source.image_str()).cloned().collect();
    let dropped = dropped.into_iter().map(|d| d.unit).collect();
    Ok((tx, ReattachPlan { image: source.image_str(), units, old, dropped, replaced }))
}

/// [`reattach`] of requests from several callers, with one transaction and
/// one reload: each request is planned on its own, and one whose plan fails
/// gets its error alone while the others go ahead together. A request that
/// touches what an earlier one does is left out (`None`): it is the
/// caller's to apply alone. Applying the others together either works for
/// all of them or fails as a whole (the host put back as it was).
pub async fn reattach_each(
    host: &Host,
    systemd: &impl UnitManager,
    requests: Vec<ImageRequest>,
    profile: &str,
    copy: CopyMode,
    actions: Actions,
    mut progress: ProgressFn,
) -> Result<Vec<Option<Result<Outcome>>>> {
    actions.check()?;
    check_extension_support(host, systemd, &requests).await?;
    check_image_policy_support(systemd, &requests).await?;
    let planning_host = host.clone();
    let profile = profile.to_string();
    let bind_os_release = binds_os_release(systemd).await?;
    let pin = pin_level(systemd).await?;
    let planned = blocking(move || -> Result<Vec<Option<Result<PlannedReattach>>>> {
        let host = planning_host;
        let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
        let settings = (profile.as_str(), copy, actions, bind_os_release, pin);
        let mut touched: std::collections::HashSet<String> = std::collections::HashSet::new();
        Ok(requests
            .iter()
            .map(|request| match plan_reattach(&host, request, &existing, settings, &mut progress) {
                Ok((_, plan)) if plan.touches().any(|t| touched.contains(t)) => None,
                Ok(planned) => {
                    touched.extend(planned.1.touches().cloned());
                    Some(Ok(planned))
                }
                Err(error) => Some(Err(error)),
            })
            .collect())
    })
    .await?;
    let mut plans: Vec<(Transaction, ReattachPlan)> = Vec::new();
    // Per request: its plan's index in `plans`, or its own result.
    let mut slots: Vec<Option<std::result::Result<usize, Error>>> = Vec::new();
    for plan in planned {
        slots.push(plan.map(|p| {
            p.map(|plan| {
                plans.push(plan);
                plans.len() - 1
            })
        }));
    }
    let outcomes = apply_reattaches(systemd, plans, actions).await?;
    let mut outcomes: Vec<Option<Outcome>> = outcomes.into_iter().map(Some).collect();
    Ok(slots
        .into_iter()
        .map(|slot| slot.map(|planned| planned.map(|at| outcomes[at].take().expect("each plan's outcome once"))))
        .collect())
}

/// Applies reattach plans as one transaction with one reload; an outcome per plan.
async fn apply_reattaches(
    systemd: &impl UnitManager,
    plans: Vec<(Transaction, ReattachPlan)>,
    actions: Actions,
) -> Result<Vec<Outcome>> {
    let (txs, plans): (Vec<Transaction>, Vec<ReattachPlan>) = plans.into_iter().unzip();
    let mut txs = txs.into_iter();
    let Some(mut tx) = txs.next() else { return Ok(Vec::new()) };
    txs.for_each(|other| tx.append(other));
    let old_units: Vec<String> = plans.iter().flat_map(|p| p.old.iter().map(|a| a.unit.clone())).collect();
    // Without a reload systemd still runs the old definitions: restarting
    // them would restart the old version, so what runs is left running.
    let running: Vec<String> = if actions.no_reload {
        Vec::new()
    } else {
        active_units(systemd, &old_units).await?.into_iter().map(|(u, _)| u).collect()
    };
    // Per plan: what it restarts (old units running that the new image
    // brings) and what it starts (`--now`).
    let restarts: Vec<(Vec<String>, Vec<String>)> = plans
        .iter()
        .map(|plan| {
            let restart: Vec<String> = running.iter().filter(|u| plan.units.contains(u)).cloned().collect();
            let started = if actions.now {
                startable(&plan.units).into_iter().filter(|u| !restart.contains(u)).collect()
            } else {
                Vec::new()
            };
            (restart, started)
        })
        .collect();
    let dropped: Vec<&String> = plans.iter().flat_map(|p| &p.dropped).collect();
    let running_dropped: Vec<String> = running.iter().filter(|u| dropped.contains(u)).cloned().collect();
    let restart: Vec<String> = restarts.iter().flat_map(|(r, _)| r.clone()).collect();
    let newly_started: Vec<String> = restarts.iter().flat_map(|(_, s)| s.clone()).collect();
    let outcomes = |changes: Vec<Change>, plans: &[ReattachPlan]| -> Vec<Outcome> {
        let owned: Vec<Owned> = plans
            .iter()
            .map(|p| Owned { image: p.image.clone(), units: p.units.iter().chain(&p.dropped).cloned().collect() })
            .collect();
        let split = split_outcome(Outcome { changes, ..Outcome::default() }, &owned);
        split
            .into_iter()
            .zip(plans.iter().zip(&restarts))
            .map(|(outcome, (plan, (restart, started)))| Outcome {
                changes: outcome.changes,
                units: plan.units.clone(),
                restarted: [restart.clone(), started.clone()].concat(),
                replaced: plan.replaced.clone(),
            })
            .collect()
    };

    if actions.check {
        return Ok(outcomes(tx.preview(), &plans));
    }
    // Journaled before any unit is touched: a recovery after a crash stops
    // what the new version started and restarts the old version's units.
    tx.on_rollback(UnitsOnRollback {
        stop: newly_started.clone(),
        restart: running.clone(),
        ..UnitsOnRollback::default()
    });
    // Undone, the old version is back: its files and links, its units running.
    let mut change = Executor::new(systemd);
    let result = async {
        let changes = change.apply(tx).await?;
        // The files of the dropped units are gone only for systemd's next
        // reload: they stop as they were.
        change.stop(&running_dropped).await?;
        if !actions.no_reload {
            change.reload().await?;
        }
        change.restart(&restart, !actions.no_block).await?;
        change.start(&newly_started, !actions.no_block).await?;
        Ok(changes)
    }
    .await;
    let changes = conclude(change, result, "reattach").await?;
    let images: Vec<&String> = plans.iter().map(|p| &p.image).collect();
    tracing::info!(?images, restarted = ?restart, "reattached");
    Ok(outcomes(changes, &plans))
}

/// The state of every image attached on the host, keyed by image path.
pub async fn states(host: &Host, systemd: &impl UnitManager) -> Result<HashMap<String, State>> {
    Ok(states_and_portabled(host, systemd).await?.0)
}

/// [`states`], and the images of those that portabled attached, from one
/// scan of the unit directories.
pub async fn states_and_portabled(
    host: &Host,
    systemd: &impl UnitManager,
) -> Result<(HashMap<String, State>, std::collections::BTreeSet<String>)> {
    let view = HostView::read(host, systemd).await?;
    Ok((view.states(), view.portabled_images()))
}

/// `states` plus, for each attached decompressed copy, the `.raw.xz` it
/// was made from, in the same state (a user names the file they have).
pub fn with_sources(mut states: HashMap<String, State>) -> HashMap<String, State> {
    let sources: Vec<(String, State)> = states
        .iter()
        .filter_map(|(path, state)| crate::image::xz::source_of(Path::new(path)).map(|record| (record.path, *state)))
        .collect();
    for (source, state) in sources {
        states.entry(source).or_insert(state);
    }
    states
}

/// The state of one image (detached when nothing of it is attached).
pub async fn state(host: &Host, systemd: &impl UnitManager, image: &str) -> Result<(String, State)> {
    state_with_extensions(host, systemd, image, &[]).await
}

/// The state of one image attached with `extensions` (empty: with any):
/// detached when it is attached only with other extensions.
pub async fn state_with_extensions(
    host: &Host,
    systemd: &impl UnitManager,
    image: &str,
    extensions: &[String],
) -> Result<(String, State)> {
    let view = HostView::read(host, systemd).await?;
    let (host, image, extensions) = (host.clone(), image.to_string(), extensions.to_vec());
    blocking(move || state_in_view(&host, &view, &image, &extensions)).await
}

/// [`state_with_extensions`] as `view` has it: the file system is read only
/// to find the image named (in the search path, or the `.raw.xz` a copy
/// was made from).
pub fn state_in_view(host: &Host, view: &HostView, image: &str, extensions: &[String]) -> Result<(String, State)> {
    let extensions_of = |a: &Attachment| Ok(view.extensions.get(&a.unit).cloned().unwrap_or_default());
    let found = attachments_among(host, view.wharf.clone(), image)
        .map_err(|e| theirs_among(host, view.portabled.clone(), image, e))
        .and_then(|(path, found)| match matching_extensions_by(host, found, &path, extensions, &extensions_of) {
            Ok(found) => Ok((path, found)),
            Err(Error::OtherExtensions { .. }) => Err(Error::NotAttached(path)),
            Err(e) => Err(e),
        });
    match found {
        Err(Error::PortabledAttachment(path)) | Ok((path, _)) => {
            let state = view.states().get(&path).copied().unwrap_or(State::Detached);
            Ok((path, state))
        }
        Err(Error::NotAttached(path)) => Ok((path, State::Detached)),
        Err(e) => Err(e),
    }
}

/// Removes an image from the pool; refused while attached or read-only.
pub fn remove(host: &Host, image: &str) -> Result<PathBuf> {
    let path = host.pool.locate(image, None)?;
    let path = std::path::absolute(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    let existing = Attachments::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
    let image_str = path.display().to_string();
    let theirs = portabled::scan(&host.root).map_err(|source| Error::Io { path: host.root.clone(), source })?;
    // A link in the search path (portabled makes them, and so does wharf)
    // is attached when what it points to is.
    let target = std::fs::canonicalize(&path).ok();
    let attached = |a: &Attachment| a.image == image_str || target.as_deref() == Some(Path::new(&a.image));
    if existing.0.iter().chain(&theirs).any(attached) {
        return Err(Error::Attached(image_str));
    }
    // An extension stacked on an attached image is in use as much as it.
    for attachment in &existing.0 {
        if attached_extensions(&host.root, attachment)?.contains(&image_str) {
            return Err(Error::AttachedAsExtension { extension: image_str, image: attachment.image.clone() });
        }
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    if readonly::is_read_only(&path, &meta) {
        return Err(Error::ReadOnly(image_str));
    }
    let removed = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    removed.map_err(|source| Error::Io { path: path.clone(), source })?;
    tracing::info!(image = image_str, "removed");
    Ok(path)
}

/// The rollback paths of attach and detach, against the in-memory manager.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::manager::fake::FakeManager;

    const UNIT: &str =
        "[Unit]\nDescription=foobar\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";

    fn host(tag: &str, unit: &str) -> Host {
        let root = std::env::temp_dir().join(format!("wharf-ops-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["etc/systemd/system", "run/systemd/system", "usr/lib/wharf/profiles/default"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("usr/lib/wharf/profiles/default/service.conf"), "[Service]\nDynamicUser=yes\n")
            .unwrap();
        let image = root.join("var/lib/portables/foobar");
        std::fs::create_dir_all(image.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(image.join("usr/lib/os-release"), "ID=foobar\nPORTABLE_PREFIXES=foobar\n").unwrap();
        std::fs::write(image.join("usr/lib/systemd/system/foobar.service"), unit).unwrap();
        Host { pool: Pool::under(&root, "portables"), journal_dir: root.join("var/lib/wharf/transactions"), root }
    }

    /// A second directory image in the pool, `name`, with one service.
    fn add_image(host: &Host, name: &str) {
        let image = host.root.join("var/lib/portables").join(name);
        std::fs::create_dir_all(image.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(image.join("usr/lib/os-release"), format!("ID={name}\nPORTABLE_PREFIXES={name}\n")).unwrap();
        std::fs::write(image.join(format!("usr/lib/systemd/system/{name}.service")), UNIT).unwrap();
    }

    /// Everything under the host's unit directories and journal.
    fn files(host: &Host) -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["etc/systemd/system", "run/systemd/system", "var/lib/wharf/transactions"] {
            let mut stack = vec![host.root.join(dir)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let path = entry.path();
                    out.push(path.strip_prefix(&host.root).unwrap().display().to_string());
                    if entry.file_type().unwrap().is_dir() {
                        stack.push(path);
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn attach_foobar(host: &Host, systemd: &FakeManager, actions: Actions) -> Result<Outcome> {
        let request = ImageRequest { image: "foobar".into(), prefixes: Vec::new(), ..Default::default() };
        zbus::block_on(attach(host, systemd, vec![request], "default", CopyMode::Copy, actions, Box::new(|_, _| {})))
    }

    const ENABLE_NOW: Actions = Actions {
        runtime: false,
        force: false,
        enable: true,
        now: true,
        no_block: false,
        no_reload: false,
        clean: false,
        check: false,
    };

    /// A plain request for each of `images`, as waiting callers send them.
    fn image_requests(images: &[&str]) -> Vec<ImageRequest> {
        images.iter().map(|image| ImageRequest { image: image.to_string(), ..Default::default() }).collect()
    }

    /// Requests applied together (group commit) share one transaction and
    /// one reload, and each gets an outcome of its own units and changes.
    #[test]
    fn requests_applied_together_get_their_own_outcomes() {
        let host = host("each", UNIT);
        add_image(&host, "barbaz");
        let systemd = FakeManager::default();
        let requests = image_requests(&["foobar", "barbaz"]);
        let outcomes = zbus::block_on(attach_each(
            &host,
            &systemd,
            requests.clone(),
            "default",
            CopyMode::Copy,
            ENABLE_NOW,
            Box::new(|_, _| {}),
        ))
        .unwrap();
        let reloads = || systemd.calls().iter().filter(|c| c.starts_with("reload")).count();
        assert_eq!(reloads(), 1, "{:?}", systemd.calls());
        for (outcome, own) in outcomes.iter().zip(["foobar.service", "barbaz.service"]) {
            assert_eq!(outcome.units, [own]);
            assert_eq!(outcome.restarted, [own]);
            assert!(!outcome.changes.is_empty());
            for change in &outcome.changes {
                assert!(change.path.contains(own) || !change.path.contains(".service"), "{own}: {change:?}");
            }
        }
        let detached =
            zbus::block_on(detach_each(&host, &systemd, requests, Actions { now: true, ..Actions::default() }))
                .unwrap();
        assert_eq!(reloads(), 2);
        assert_eq!(detached[1].units, ["barbaz.service"]);
        assert!(detached[1].changes.iter().all(|c| c.path.contains("barbaz")), "{:?}", detached[1].changes);
        assert_eq!(files(&host).iter().filter(|f| f.contains(".service")).count(), 0, "{:?}", files(&host));
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// Reattaches applied together share one transaction and one reload;
    /// one whose plan fails gets its error alone, and one that touches the
    /// units another does is left for its caller to apply alone.
    #[test]
    fn reattaches_applied_together_fail_alone() {
        let host = host("reattach-each", UNIT);
        add_image(&host, "barbaz");
        let systemd = FakeManager::default();
        let requests = image_requests(&["foobar", "barbaz"]);
        let attached =
            attach_each(&host, &systemd, requests, "default", CopyMode::Copy, ENABLE_NOW, Box::new(|_, _| {}));
        zbus::block_on(attached).unwrap();
        // No units: its plan fails.
        std::fs::create_dir_all(host.root.join("var/lib/portables/empty/usr/lib")).unwrap();
        std::fs::write(host.root.join("var/lib/portables/empty/usr/lib/os-release"), "ID=x\nPORTABLE_PREFIXES=empty\n")
            .unwrap();
        systemd.calls.lock().unwrap().clear();
        let requests = image_requests(&["foobar", "empty", "barbaz", "foobar"]);
        let results = zbus::block_on(reattach_each(
            &host,
            &systemd,
            requests,
            "default",
            CopyMode::Copy,
            Actions::default(),
            Box::new(|_, _| {}),
        ))
        .unwrap();
        assert_eq!(systemd.calls().iter().filter(|c| c.starts_with("reload")).count(), 1, "{:?}", systemd.calls());
        let [foobar, empty, barbaz, again] = &results[..] else { panic!("{} results", results.len()) };
        let foobar = foobar.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(foobar.units, ["foobar.service"]);
        assert_eq!(foobar.restarted, ["foobar.service"], "it ran: it runs again");
        assert!(foobar.changes.iter().all(|c| !c.path.contains("barbaz")), "{:?}", foobar.changes);
        let barbaz = barbaz.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(barbaz.units, ["barbaz.service"]);
        assert!(barbaz.changes.iter().all(|c| !c.path.contains("foobar")), "{:?}", barbaz.changes);
        assert!(matches!(empty, Some(Err(Error::NoUnits(_)))), "{empty:?}");
        assert!(again.is_none(), "the second reattach of foobar went with the first");
        assert_eq!(systemd.running(), ["barbaz.service", "foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A planned attach and detach (`--check`) touch neither the files nor
    /// systemd, and report exactly the changes the real ones then make.
    #[test]
    fn a_check_changes_nothing_and_foretells_the_real_changes() {
        let host = host("check", UNIT);
        let systemd = FakeManager::default();
        let planned = attach_foobar(&host, &systemd, Actions { check: true, ..ENABLE_NOW }).unwrap();
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.calls(), Vec::<String>::new());
        assert_eq!(planned.restarted, ["foobar.service"]);
        let done = attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
        assert_eq!(planned.changes, done.changes);
        assert!(
            done.changes
                .iter()
                .any(|c| c.kind == "symlink" && c.path.ends_with("multi-user.target.wants/foobar.service"))
        );

        let attached = files(&host);
        let calls = systemd.calls().len();
        let detach_check = Actions { check: true, now: true, ..Actions::default() };
        let planned = zbus::block_on(detach(&host, &systemd, "foobar", &[], detach_check)).unwrap();
        assert_eq!(files(&host), attached);
        assert_eq!(systemd.calls().len(), calls, "{:?}", systemd.calls());
        let done = zbus::block_on(detach(&host, &systemd, "foobar", &[], Actions { now: true, ..Actions::default() }))
            .unwrap();
        assert_eq!(planned.changes, done.changes);
        assert_eq!(planned.restarted, done.restarted);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn an_attach_whose_reload_fails_leaves_nothing() {
        let host = host("reload", UNIT);
        let systemd = FakeManager::default();
        systemd.fail("reload", 1);
        let error = attach_foobar(&host, &systemd, Actions { enable: true, ..Actions::default() }).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert_eq!(error.to_string(), "systemd: reload job failed; the host was left as it was");
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.calls(), ["reload", "reload"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// The reload that undoes a failed attach fails too: the files are
    /// gone, but systemd may still know the units, and the error says so
    /// instead of claiming the host is as it was.
    #[test]
    fn an_attach_whose_undo_reload_fails_says_it_was_rolled_back_only_in_part() {
        let host = host("undo-reload", UNIT);
        let systemd = FakeManager::default();
        systemd.fail("reload", 2);
        let error = attach_foobar(&host, &systemd, Actions { enable: true, ..Actions::default() }).unwrap_err();
        let Error::PartiallyRolledBack { error: first, failed_steps } = &error else {
            panic!("not partly rolled back: {error}");
        };
        assert_eq!(first.to_string(), "systemd: reload job failed");
        let steps: Vec<&str> = failed_steps.iter().map(|f| f.step.as_str()).collect();
        assert_eq!(steps, ["reloading systemd"]);
        assert_eq!(
            error.to_string(),
            "systemd: reload job failed; the host was put back only in part, these undo steps failed: \
             reloading systemd (systemd: reload job failed)"
        );
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.calls(), ["reload", "reload"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A started unit that cannot be stopped again, after its start failed:
    /// both it and the reload are named, in the order they were tried; the
    /// files, whose undo worked, are not.
    #[test]
    fn an_attach_names_every_undo_step_that_failed() {
        let host = host("undo-many", UNIT);
        let systemd = FakeManager::default();
        systemd.fail("start", 1);
        systemd.fail("stop", 1);
        let error = attach_foobar(&host, &systemd, ENABLE_NOW).unwrap_err();
        let Error::PartiallyRolledBack { failed_steps, .. } = &error else {
            panic!("not partly rolled back: {error}");
        };
        assert_eq!(
            failed_steps.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            ["stopping the units it started (foobar.service: stop job failed)"]
        );
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.running(), ["foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn an_attach_whose_unit_fails_after_start_is_stopped_and_removed() {
        let host = host("start", UNIT);
        let systemd = FakeManager::default();
        systemd.fail("start", 1);
        let error = attach_foobar(&host, &systemd, ENABLE_NOW).unwrap_err();
        assert_eq!(
            error.to_string(),
            "foobar.service failed right after it was started (see journalctl -u foobar.service); the host was left as it was"
        );
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.calls(), ["reload", "start foobar.service", "stop foobar.service", "reload"]);
        assert!(systemd.running().is_empty());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// Enabling fails (its link directory cannot be made): the unit files
    /// written before it are taken back, and systemd is never asked anything.
    #[test]
    fn an_attach_whose_enable_fails_leaves_nothing() {
        let host = host("enable", UNIT);
        let wants = host.root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::write(&wants, "in the way").unwrap();
        let systemd = FakeManager::default();
        let error = attach_foobar(&host, &systemd, ENABLE_NOW).unwrap_err();
        assert!(error.to_string().contains("multi-user.target.wants"), "{error}");
        assert_eq!(files(&host), ["etc/systemd/system/multi-user.target.wants"]);
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A hostile [Install] section is refused before anything changes.
    #[test]
    fn an_attach_with_a_bad_install_section_changes_nothing() {
        let host = host("install", &UNIT.replace("multi-user.target", "../../../etc/evil.target"));
        let systemd = FakeManager::default();
        let error = attach_foobar(&host, &systemd, ENABLE_NOW).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unit foobar.service: WantedBy=../../../etc/evil.target is not a unit name wharf can enable it for"
        );
        assert_eq!(files(&host), Vec::<String>::new());
        assert!(systemd.calls().is_empty());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn a_detach_whose_reload_fails_puts_back_files_links_and_running_units() {
        let host = host("detach", UNIT);
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
        let attached = files(&host);
        assert!(attached.contains(&"etc/systemd/system/multi-user.target.wants/foobar.service".to_string()));
        systemd.calls.lock().unwrap().clear();
        systemd.fail("reload", 1);
        let now = Actions { now: true, ..Actions::default() };
        let error = zbus::block_on(detach(&host, &systemd, "foobar", &[], now)).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert_eq!(files(&host), attached);
        assert_eq!(systemd.running(), ["foobar.service"]);
        assert_eq!(systemd.calls(), ["stop foobar.service", "reload", "reload", "start foobar.service"]);

        // And when it works, the link goes with the unit.
        zbus::block_on(detach(&host, &systemd, "foobar", &[], now)).unwrap();
        assert_eq!(files(&host), ["etc/systemd/system/multi-user.target.wants"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// --clean: the service's own directories are removed after its stop
    /// and before the reload; a directory named after neither the image
    /// nor the unit refuses the detach before anything changes.
    #[test]
    fn detach_clean_removes_only_the_images_directories() {
        let host = host("clean", UNIT);
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
        let attached = files(&host);
        let clean = Actions { now: true, clean: true, ..Actions::default() };
        systemd.directories.lock().unwrap().insert(
            "foobar.service".into(),
            vec![("StateDirectory", "foobar".into()), ("ConfigurationDirectory", "systemd".into())],
        );
        let calls = systemd.calls().len();
        let error = zbus::block_on(detach(&host, &systemd, "foobar", &[], clean)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "not cleaning 'foobar.service' of image '{}': its ConfigurationDirectory=systemd is not the \
                 image's (it must be named after the image or the unit)",
                host.root.join("var/lib/portables/foobar").display()
            )
        );
        assert_eq!(files(&host), attached);
        assert_eq!(systemd.calls().len(), calls, "nothing was stopped");
        assert_eq!(systemd.running(), ["foobar.service"]);

        systemd.directories.lock().unwrap().insert(
            "foobar.service".into(),
            vec![("StateDirectory", "foobar".into()), ("LogsDirectory", "foobar-logs/sub".into())],
        );
        zbus::block_on(detach(&host, &systemd, "foobar", &[], clean)).unwrap();
        assert!(
            systemd.calls().ends_with(
                &["stop foobar.service", "clean foobar.service", "reload", "unpin foobar.service"].map(String::from)
            ),
            "{:?}",
            systemd.calls()
        );
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    #[test]
    fn only_directories_named_after_the_image_or_unit_are_its_own() {
        for (directory, own) in [
            ("foobar", true),
            ("foobar/sub", true),
            ("foobar-web", true),
            ("foobar_x", true),
            ("web", true),
            ("web.d", true),
            ("systemd", false),
            ("foobarx", false),
            ("", false),
            ("/foobar", false),
            ("foobar/../systemd", false),
            ("./foobar", false),
        ] {
            assert_eq!(directory_of(directory, "foobar", "web@1.service"), own, "{directory}");
        }
        assert!(directory_of("x", "", "x.service"), "the unit's own name, with no image prefix");
    }

    /// A detach whose reload fails twice: the files and the running unit
    /// are back, and the error names the reload that could not be redone.
    #[test]
    fn a_detach_whose_undo_reload_fails_names_it() {
        let host = host("detach-undo", UNIT);
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
        let attached = files(&host);
        systemd.fail("reload", 2);
        let now = Actions { now: true, ..Actions::default() };
        let error = zbus::block_on(detach(&host, &systemd, "foobar", &[], now)).unwrap_err();
        let Error::PartiallyRolledBack { failed_steps, .. } = &error else {
            panic!("not partly rolled back: {error}");
        };
        let steps: Vec<&str> = failed_steps.iter().map(|f| f.step.as_str()).collect();
        assert_eq!(steps, ["reloading systemd"]);
        assert_eq!(files(&host), attached);
        assert_eq!(systemd.running(), ["foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A batch detach: one reload for all its images; an image that is not
    /// attached, or a failed reload, leaves every image attached and running.
    #[test]
    fn a_batch_detach_reloads_once_and_is_all_or_none() {
        let host = host("batch", UNIT);
        add_image(&host, "other");
        let systemd = FakeManager::default();
        let requests = ["foobar", "other"].map(|image| ImageRequest {
            image: image.into(),
            prefixes: Vec::new(),
            ..Default::default()
        });
        zbus::block_on(attach(
            &host,
            &systemd,
            requests.to_vec(),
            "default",
            CopyMode::Copy,
            ENABLE_NOW,
            Box::new(|_, _| {}),
        ))
        .unwrap();
        let attached = files(&host);
        let now = Actions { now: true, ..Actions::default() };
        let batch = |images: &[&str]| images.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        systemd.calls.lock().unwrap().clear();

        let error = zbus::block_on(detach_batch(&host, &systemd, batch(&["foobar", "nope"]), now)).unwrap_err();
        assert_eq!(error.to_string(), "image 'nope' is not attached");
        let error =
            zbus::block_on(detach_batch(&host, &systemd, batch(&["foobar", "other"]), Actions::default())).unwrap_err();
        assert!(matches!(error, Error::Running { .. }), "{error}");
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());

        systemd.fail("reload", 1);
        let error = zbus::block_on(detach_batch(&host, &systemd, batch(&["foobar", "other"]), now)).unwrap_err();
        assert!(matches!(error, Error::RolledBack(_)), "{error}");
        assert_eq!(files(&host), attached);
        assert_eq!(systemd.running(), ["foobar.service", "other.service"]);

        systemd.calls.lock().unwrap().clear();
        let done = zbus::block_on(detach_batch(&host, &systemd, batch(&["other", "foobar", "other"]), now)).unwrap();
        assert_eq!(done.units, ["other.service", "foobar.service"]);
        assert_eq!(systemd.calls().iter().filter(|c| *c == "reload").count(), 1, "{:?}", systemd.calls());
        assert!(systemd.running().is_empty());
        assert_eq!(files(&host), ["etc/systemd/system/multi-user.target.wants"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A detach that cannot be planned stops nothing.
    #[test]
    fn a_detach_that_cannot_be_planned_leaves_its_units_running() {
        let host = host("plan", UNIT);
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
        systemd.calls.lock().unwrap().clear();
        // Its drop-in directory can no longer be read.
        let dropins = host.root.join("etc/systemd/system/foobar.service.d");
        std::fs::rename(&dropins, host.root.join("aside")).unwrap();
        std::fs::write(&dropins, "not a directory").unwrap();
        let now = Actions { now: true, ..Actions::default() };
        assert!(zbus::block_on(detach(&host, &systemd, "foobar", &[], now)).is_err());
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
        assert_eq!(systemd.running(), ["foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// After a crash: what still runs of the units an interrupted change
    /// started is stopped (a unit that is not running is not asked, its
    /// files may be gone), then systemd reloads and the units it had
    /// stopped run again.
    #[test]
    fn a_recovery_stops_what_was_started_and_restarts_what_was_stopped() {
        let systemd = FakeManager::default();
        systemd.running.lock().unwrap().insert("started.service".into());
        let units = UnitsOnRollback {
            stop: vec!["started.service".into(), "never-ran.service".into()],
            restart: vec!["stopped.service".into()],
            ..UnitsOnRollback::default()
        };
        assert_eq!(zbus::block_on(settle_recovery(&systemd, &units)), Vec::<FailedUndo>::new());
        assert_eq!(systemd.calls(), ["stop started.service", "reload", "restart stopped.service"]);
        assert_eq!(systemd.running(), ["stopped.service"]);

        systemd.fail("reload", 1);
        let failed = zbus::block_on(settle_recovery(&systemd, &UnitsOnRollback::default()));
        assert_eq!(failed.iter().map(|f| f.step.as_str()).collect::<Vec<_>>(), ["reloading systemd"]);
    }

    /// A reattach whose reload fails puts the old version back, enabled and
    /// running again; when the undo's reload fails too, the error names it.
    #[test]
    fn a_reattach_whose_reload_fails_puts_the_old_version_back() {
        for reload_failures in [1, 2] {
            let host = host(&format!("reattach-{reload_failures}"), UNIT);
            let systemd = FakeManager::default();
            attach_foobar(&host, &systemd, ENABLE_NOW).unwrap();
            let new = host.root.join("var/lib/portables/foobar_2");
            std::fs::create_dir_all(new.join("usr/lib/systemd/system")).unwrap();
            std::fs::write(new.join("usr/lib/os-release"), "ID=foobar\nPORTABLE_PREFIXES=foobar\n").unwrap();
            std::fs::write(new.join("usr/lib/systemd/system/foobar.service"), UNIT.replace("/bin/true", "/bin/false"))
                .unwrap();
            let before: Vec<(String, String)> = files(&host)
                .into_iter()
                .map(|f| (f.clone(), std::fs::read_to_string(host.root.join(&f)).unwrap_or_default()))
                .collect();
            systemd.calls.lock().unwrap().clear();
            systemd.fail("reload", reload_failures);
            let request = ImageRequest { image: "foobar_2".into(), prefixes: Vec::new(), ..Default::default() };
            let error = zbus::block_on(reattach(
                &host,
                &systemd,
                request,
                "default",
                CopyMode::Copy,
                Actions { enable: true, ..Actions::default() },
                Box::new(|_, _| {}),
            ))
            .unwrap_err();
            match &error {
                Error::RolledBack(_) if reload_failures == 1 => {}
                Error::PartiallyRolledBack { failed_steps, .. } if reload_failures == 2 => {
                    let steps: Vec<&str> = failed_steps.iter().map(|f| f.step.as_str()).collect();
                    assert_eq!(steps, ["reloading systemd"]);
                }
                _ => panic!("{reload_failures} failed reloads: {error}"),
            }
            let after: Vec<(String, String)> = files(&host)
                .into_iter()
                .map(|f| (f.clone(), std::fs::read_to_string(host.root.join(&f)).unwrap_or_default()))
                .collect();
            assert_eq!(after, before);
            assert_eq!(systemd.calls(), ["reload", "reload"]);
            assert_eq!(systemd.running(), ["foobar.service"]);
            std::fs::remove_dir_all(&host.root).unwrap();
        }
    }

    /// A second attach of the same image, the same way, changes nothing and
    /// reloads nothing; any other second attach is refused, naming the file
    /// that would change.
    #[test]
    fn a_second_attach_is_a_no_op_when_identical_and_refused_otherwise() {
        let host = host("second", UNIT);
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, Actions::default()).unwrap();
        let attached = files(&host);
        systemd.calls.lock().unwrap().clear();
        let again = attach_foobar(&host, &systemd, Actions::default()).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.units, ["foobar.service"]);
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());

        let request = ImageRequest { image: "foobar".into(), prefixes: Vec::new(), ..Default::default() };
        let strict = zbus::block_on(attach(
            &host,
            &systemd,
            vec![request],
            "default",
            CopyMode::Symlink,
            Actions::default(),
            Box::new(|_, _| {}),
        ))
        .unwrap_err();
        assert!(matches!(strict, Error::AlreadyAttached { .. }), "{strict}");
        assert!(strict.to_string().contains("use reattach"), "{strict}");
        assert_eq!(files(&host), attached);
        assert!(systemd.calls().is_empty(), "{:?}", systemd.calls());
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// --no-reload writes and removes the files and never reloads; with
    /// --now it is refused before anything is touched.
    #[test]
    fn no_reload_changes_files_only_and_is_refused_with_now() {
        let host = host("no-reload", UNIT);
        let systemd = FakeManager::default();
        let no_reload = Actions { no_reload: true, ..Actions::default() };
        attach_foobar(&host, &systemd, no_reload).unwrap();
        assert!(files(&host).contains(&"etc/systemd/system/foobar.service".to_string()));
        assert!(systemd.calls().iter().all(|c| c != "reload"), "{:?}", systemd.calls());
        zbus::block_on(detach(&host, &systemd, "foobar", &[], no_reload)).unwrap();
        assert!(!files(&host).contains(&"etc/systemd/system/foobar.service".to_string()));
        assert!(systemd.calls().iter().all(|c| c != "reload"), "{:?}", systemd.calls());

        let both = attach_foobar(&host, &systemd, Actions { no_reload: true, now: true, ..Actions::default() });
        assert!(matches!(both, Err(Error::NoReloadWithNow)), "{both:?}");
        assert!(files(&host).iter().all(|f| !f.contains("foobar")), "{:?}", files(&host));
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A running unit is refused without --now; --force detaches it and
    /// leaves it running; prefixes detach only the units they match.
    #[test]
    fn detach_force_leaves_units_running_and_prefixes_choose_units() {
        let host = host("force", UNIT);
        let image = host.root.join("var/lib/portables/foobar/usr/lib/systemd/system");
        std::fs::write(image.join("foobar-web.service"), UNIT).unwrap();
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, Actions { now: true, ..Actions::default() }).unwrap();
        let running = zbus::block_on(detach(&host, &systemd, "foobar", &[], Actions::default())).unwrap_err();
        assert!(matches!(running, Error::Running { .. }), "{running}");

        let none = zbus::block_on(detach(&host, &systemd, "foobar", &["nope".into()], Actions::default()));
        assert!(matches!(none, Err(Error::NoUnitsMatch { .. })), "{none:?}");
        let web = Actions { force: true, ..Actions::default() };
        let done = zbus::block_on(detach(&host, &systemd, "foobar", &["foobar-web".into()], web)).unwrap();
        assert_eq!(done.units, ["foobar-web.service"]);
        assert!(done.restarted.is_empty(), "--force stops nothing");
        let left = files(&host);
        assert!(left.contains(&"etc/systemd/system/foobar.service".to_string()), "{left:?}");
        assert!(!left.contains(&"etc/systemd/system/foobar-web.service".to_string()), "{left:?}");
        assert_eq!(systemd.running(), ["foobar-web.service", "foobar.service"]);
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// An attachment is found by its path, its file name, and its name
    /// without `.raw`; an attached decompressed copy also by the `.raw.xz`
    /// it was made from.
    #[test]
    fn attachments_are_found_by_every_name_of_the_image() {
        let host = host("names", UNIT);
        let attachment = |image: &str| Attachment { image: image.into(), unit: "hxz.service".into(), runtime: false };
        let copy = host.root.join("var/lib/portables/hxz.raw");
        std::fs::write(&copy, b"raw").unwrap();
        let existing = Attachments(vec![attachment(&copy.display().to_string())]);
        let xz_path = host.root.join("srv/hxz.raw.xz").display().to_string();
        let record = crate::image::xz::SourceRecord { path: xz_path.clone(), sha256: "0".repeat(64) };
        let recorded = rustix::fs::setxattr(
            &copy,
            crate::image::xz::SOURCE_XATTR,
            record.encode().as_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        for name in ["hxz", "hxz.raw", copy.to_str().unwrap()] {
            let (path, found) = attachments_among(&host, existing.clone(), name).unwrap();
            assert_eq!((path.as_str(), found.len()), (copy.to_str().unwrap(), 1), "{name}");
        }
        // The copy is root's (the unit tests run as root, as CI does).
        recorded.expect("a user xattr on the copy");
        for name in ["hxz.raw.xz", xz_path.as_str()] {
            assert!(attachments_among(&host, existing.clone(), name).is_ok(), "{name}");
        }
        assert!(matches!(attachments_among(&host, existing.clone(), "hx"), Err(Error::NotAttached(_))));
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// In a batch, an image attached already exactly so does not stop the
    /// others; one attached otherwise is named.
    #[test]
    fn a_batch_with_an_identical_attachment_attaches_the_rest() {
        let host = host("batch-second", UNIT);
        let other = host.root.join("var/lib/portables/other");
        std::fs::create_dir_all(other.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(other.join("usr/lib/os-release"), "ID=other\n").unwrap();
        std::fs::write(other.join("usr/lib/systemd/system/other.service"), UNIT).unwrap();
        let systemd = FakeManager::default();
        attach_foobar(&host, &systemd, Actions::default()).unwrap();
        let batch = |copy| {
            let requests = ["foobar", "other"].map(|image| ImageRequest {
                image: image.into(),
                prefixes: Vec::new(),
                ..Default::default()
            });
            zbus::block_on(attach(
                &host,
                &systemd,
                requests.to_vec(),
                "default",
                copy,
                Actions::default(),
                Box::new(|_, _| {}),
            ))
        };
        let refused = batch(CopyMode::Symlink).unwrap_err();
        assert!(
            refused.to_string().starts_with("image '") && refused.to_string().contains("/foobar' is attached already"),
            "{refused}"
        );
        let done = batch(CopyMode::Copy).unwrap();
        assert!(done.changes.iter().all(|c| c.path.contains("other")), "{:?}", done.changes);
        assert!(files(&host).contains(&"etc/systemd/system/other.service".to_string()));
        std::fs::remove_dir_all(&host.root).unwrap();
    }

    /// A directory extension stacked on foobar: its unit is attached with
    /// the image's and linked into the extension, the drop-in stacks it,
    /// detach and state find the attachment by its extensions, and an
    /// extension made for another image is refused with nothing written.
    #[test]
    fn extensions_are_stacked_found_by_their_names_and_checked() {
        let host = host("extensions", UNIT);
        let pool = host.root.join("var/lib/portables");
        let extension = |name: &str, release_for: &str, release: &str| {
            let dir = pool.join(name);
            std::fs::create_dir_all(dir.join("usr/lib/extension-release.d")).unwrap();
            std::fs::create_dir_all(dir.join("usr/lib/systemd/system")).unwrap();
            let file = format!("usr/lib/extension-release.d/extension-release.{release_for}");
            std::fs::write(dir.join(file), release).unwrap();
            std::fs::write(dir.join("usr/lib/systemd/system/foobar-more.service"), UNIT).unwrap();
            // The image's own unit of the same name wins.
            std::fs::write(dir.join("usr/lib/systemd/system/foobar.service"), "[Service]\nExecStart=/ext\n").unwrap();
        };
        extension("foobar-ext", "foobar-ext", "ID=foobar\n");
        let systemd = FakeManager::default();
        let request = |extensions: &[&str]| ImageRequest {
            image: "foobar".into(),
            extensions: extensions.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        let attach_with = |extensions: &[&str]| {
            let requests = vec![request(extensions)];
            zbus::block_on(attach(
                &host,
                &systemd,
                requests,
                "default",
                CopyMode::Auto,
                Actions::default(),
                Box::new(|_, _| {}),
            ))
        };
        let done = attach_with(&["foobar-ext"]).unwrap();
        assert_eq!(done.units, ["foobar-more.service", "foobar.service"]);
        let dir = host.root.join("etc/systemd/system");
        let (image, ext) = (pool.join("foobar").display().to_string(), pool.join("foobar-ext").display().to_string());
        let dropin = std::fs::read_to_string(dir.join("foobar-more.service.d/20-portable.conf")).unwrap();
        assert!(
            dropin.starts_with(&format!(
                "# Drop-in created by wharf for image '{image}:{ext}', do not edit.\n[Service]\n\
                 RootDirectory={image}\nExtensionDirectories={ext}\n"
            )),
            "{dropin}"
        );
        assert!(dropin.ends_with("LogExtraFields=PORTABLE_EXTENSION=foobar-ext\n"), "{dropin}");
        let link = |unit: &str| std::fs::read_link(dir.join(unit)).unwrap();
        assert_eq!(link("foobar-more.service"), pool.join("foobar-ext/usr/lib/systemd/system/foobar-more.service"));
        assert_eq!(link("foobar.service"), pool.join("foobar/usr/lib/systemd/system/foobar.service"));

        let state = |extensions: &[&str]| {
            let extensions: Vec<String> = extensions.iter().map(|e| e.to_string()).collect();
            zbus::block_on(state_with_extensions(&host, &systemd, "foobar", &extensions)).unwrap().1
        };
        assert_eq!(state(&["foobar-ext"]), State::Attached);
        assert_eq!(state(&[ext.as_str()]), State::Attached);
        assert_eq!(state(&[]), State::Attached);
        assert_eq!(state(&["foobar-other"]), State::Detached);
        let error = remove(&host, "foobar-ext").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("image '{ext}' is attached as an extension of image '{image}'; detach that first")
        );

        let detach_with = |extensions: &[&str]| {
            zbus::block_on(detach_with_extensions(&host, &systemd, request(extensions), Actions::default()))
        };
        let error = detach_with(&["foobar"]).unwrap_err();
        assert_eq!(error.to_string(), format!("image '{image}' is attached with extensions '{ext}', not '{image}'"));
        detach_with(&["foobar-ext"]).unwrap();
        assert_eq!(files(&host), Vec::<String>::new(), "the link into the extension is wharf's too");

        // Made for another OS: refused, nothing written, systemd not asked.
        extension("foobar-bad", "foobar-bad", "ID=debian\n");
        let calls = systemd.calls().len();
        let error = attach_with(&["foobar-bad"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "extension '{}' does not match image '{image}': its extension-release says ID=debian, the image's \
                 os-release ID=foobar",
                pool.join("foobar-bad").display()
            )
        );
        // Named for another image.
        extension("foobar-odd", "other", "ID=foobar\n");
        let error = attach_with(&["foobar-odd"]).unwrap_err();
        assert!(error.to_string().ends_with("(it has extension-release.other)"), "{error}");
        let error = attach_with(&["foobar-ext", "foobar-ext"]).unwrap_err();
        assert!(matches!(error, Error::DuplicateExtension { .. }), "{error}");
        assert_eq!(files(&host), Vec::<String>::new());
        assert_eq!(systemd.calls().len(), calls);
        std::fs::remove_dir_all(&host.root).unwrap();
    }
}
