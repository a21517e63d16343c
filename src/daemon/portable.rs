//! `org.wharf1.Portable`: portable service images.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use zbus::Connection;
use zbus::OwnedVariant;
use zbus::message::Header;

use super::auth::authorize;
use super::commit::Operation;
use super::manager::{heartbeat, progress_reporter};
use super::{Daemon, failed};
use crate::api::{BusError, ImageInfo, OperationResult, PortableImageEntry, flags};
use crate::audit::{Call, Caller, Domain, Kind};
use crate::image::{Pool, readonly};
use crate::portable::ops::{self, Actions, Host, ImageRequest};
use crate::portable::plan::CopyMode;
use crate::portable::view::HostView;
use crate::portable::{Error, State};
use crate::systemd::Systemd;

#[derive(Debug)]
pub(crate) struct PortableInterface {
    daemon: Arc<Daemon>,
    host: Host,
}

impl PortableInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        PortableInterface { daemon, host: Host::system() }
    }

    async fn systemd(&self, connection: &Connection) -> Result<Systemd, BusError> {
        Systemd::new(connection).await.map_err(failed)
    }

    /// What every call that changes attachments starts with: the caller may
    /// ([`authorize`]; `what` names the call in a refusal), and no other such call
    /// runs until the returned guard is dropped.
    async fn begin_change(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        what: &str,
    ) -> Result<Change<'_>, BusError> {
        let grouped = self.begin_grouped_change(connection, header, what).await?;
        let exclusive = self.daemon.change_lock(what).await?;
        let in_flight = self.daemon.snapshot.begin(&self.host, connection, &grouped.systemd).await;
        Ok(Change { grouped, _in_flight: in_flight, _exclusive: exclusive })
    }

    /// [`Self::begin_change`] of a change that takes the lock itself, with
    /// the others waiting for it ([`super::commit`]).
    async fn begin_grouped_change(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        what: &str,
    ) -> Result<GroupedChange, BusError> {
        let caller = authorize(connection, header, what).await?;
        let busy = self.daemon.busy();
        let heartbeat = heartbeat(connection, header);
        // Its own jobs' state changes are not news for reads (see snapshot).
        let systemd = self.systemd(connection).await?.observed(self.daemon.snapshot.observer());
        Ok(GroupedChange { _busy: busy, _heartbeat: heartbeat, systemd, caller })
    }
}

/// A state-changing call in progress; see [`PortableInterface::begin_change`].
struct Change<'a> {
    grouped: GroupedChange,
    // Dropped before the lock: reads read the host again first.
    _in_flight: super::snapshot::InFlight,
    _exclusive: zruntime::lock::MutexGuard<'a, ()>,
}

impl std::ops::Deref for Change<'_> {
    type Target = GroupedChange;
    fn deref(&self) -> &GroupedChange {
        &self.grouped
    }
}

/// A state-changing call that may be applied with others.
struct GroupedChange {
    _busy: super::BusyGuard,
    _heartbeat: Option<zruntime::Task<(), zruntime::Shared>>,
    systemd: Systemd,
    caller: Caller,
}

fn check_flags(flags: u64) -> Result<Actions, BusError> {
    if flags & !flags::ALL != 0 {
        return Err(BusError::InvalidArgument(format!("unknown flags {:#x}", flags & !flags::ALL)));
    }
    Ok(Actions::from_flags(flags))
}

/// A detach that removes the services' directories says so in its entry:
/// what it removed cannot be put back.
fn cleaning(audit: Call, flags: u64) -> Call {
    if flags & flags::CLEAN != 0 { audit.field("WHARF_CLEAN", "yes") } else { audit }
}

/// A change's audit entry; a plan (`CHECK`) changed nothing and has none.
async fn record(audit: Call, flags: u64, result: &Result<ops::Outcome, Error>) {
    if flags & flags::CHECK == 0 {
        audit.finish(result).await;
    }
}

fn copy_mode(word: &str) -> Result<CopyMode, BusError> {
    word.parse().map_err(|e: Error| BusError::from(e))
}

fn profile_or_default(profile: &str) -> &str {
    if profile.is_empty() { crate::portable::profile::DEFAULT_PROFILE } else { profile }
}

/// The audit entry of a call that stacks or names extensions says which.
fn with_extensions(audit: Call, extensions: &[String]) -> Call {
    if extensions.is_empty() { audit } else { audit.field("WHARF_EXTENSIONS", extensions.join(" ")) }
}

impl PortableInterface {
    async fn attach_one(
        &self,
        request: ImageRequest,
        profile: String,
        copy_mode: String,
        flags: u64,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let what = "attaching an image";
        let change = self.begin_grouped_change(connection, header, what).await?;
        let audit = Call::new(Kind::Attach, change.caller.clone()).image(&self.host.pool, &request.image);
        let audit = with_extensions(audit, &request.extensions);
        let (actions, copy) = audit.check(check_flags(flags).and_then(|a| Ok((a, self::copy_mode(&copy_mode)?))))?;
        let progress = Box::new(progress_reporter(connection, header, &format!("decompress {}", request.image)));
        let profile = profile_or_default(&profile).to_string();
        let operation = Operation::Attach { profile: profile.clone(), copy, actions };
        let commits = &self.daemon.commits;
        let submitted = (operation, request, progress as ops::ProgressFn);
        let result = commits.submit(&self.daemon, &self.host, &change.systemd, what, submitted).await;
        let result = result?;
        record(audit.profile(&profile), flags, &result).await;
        Ok(result?.into())
    }

    async fn detach_one(
        &self,
        request: ImageRequest,
        flags: u64,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let what = "detaching an image";
        let change = self.begin_grouped_change(connection, header, what).await?;
        let audit = Call::new(Kind::Detach, change.caller.clone()).image_now(&self.host.pool, &request.image).await;
        let audit = with_extensions(cleaning(audit, flags), &request.extensions);
        let actions = audit.check(check_flags(flags))?;
        let operation = Operation::Detach { actions };
        let nothing: ops::ProgressFn = Box::new(|_, _| {});
        let commits = &self.daemon.commits;
        let result =
            commits.submit(&self.daemon, &self.host, &change.systemd, what, (operation, request, nothing)).await;
        let result = result?;
        record(audit, flags, &result).await;
        Ok(result?.into())
    }

    async fn reattach_one(
        &self,
        request: ImageRequest,
        profile: String,
        copy_mode: String,
        flags: u64,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let what = "reattaching an image";
        let change = self.begin_grouped_change(connection, header, what).await?;
        let audit = Call::new(Kind::Reattach, change.caller.clone()).image(&self.host.pool, &request.image);
        let audit = with_extensions(audit, &request.extensions);
        let (actions, copy) = audit.check(check_flags(flags).and_then(|a| Ok((a, self::copy_mode(&copy_mode)?))))?;
        let progress = Box::new(progress_reporter(connection, header, &format!("decompress {}", request.image)));
        let profile = profile_or_default(&profile).to_string();
        let operation = Operation::Reattach { profile: profile.clone(), copy, actions };
        let commits = &self.daemon.commits;
        let submitted = (operation, request, progress as ops::ProgressFn);
        let result = commits.submit(&self.daemon, &self.host, &change.systemd, what, submitted).await?;
        record(audit.profile(&profile), flags, &result).await;
        Ok(result?.into())
    }

    async fn image_state(
        &self,
        image: String,
        extensions: Vec<String>,
        connection: &Connection,
    ) -> Result<(String, String), BusError> {
        let (path, state, _) = self.image_units(image, extensions, connection).await?;
        Ok((path, state))
    }

    /// The image's path and state, and its attached units with systemd's
    /// states of them, from the host as the last finished change left it.
    async fn image_units(
        &self,
        image: String,
        extensions: Vec<String>,
        connection: &Connection,
    ) -> Result<(String, String, Arc<HostView>), BusError> {
        let _busy = self.daemon.busy();
        let systemd = self.systemd(connection).await?;
        let view = self.daemon.snapshot.read(&self.host, &systemd).await?;
        let host = self.host.clone();
        self.daemon
            .blocking(move || {
                let (path, state) = ops::state_in_view(&host, &view, &image, &extensions)?;
                Ok((path, state.to_string(), view))
            })
            .await
    }
}

#[zbus::interface(name = "org.wharf1.Portable")]
impl PortableInterface {
    /// Sets the size limit of an image (`image` empty: of the pool's
    /// /var/lib/portables) to `limit` bytes (`u64::MAX`: none), on btrfs,
    /// as portablectl set-limit. Root, or polkit's `org.wharf1.portable.attach`.
    async fn set_image_limit(
        &self,
        image: String,
        limit: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        authorize(connection, &header, "setting a size limit").await?;
        let store = crate::machine::store::Store::portables();
        super::machine::set_store_limit(&self.daemon, store, image, limit).await
    }

    /// Every image in the portable search path, with its attachment state
    /// and who attached it (wharf or portablectl), and every image attached
    /// from elsewhere.
    async fn list_images(
        &self,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<PortableImageEntry>, BusError> {
        let _busy = self.daemon.busy();
        let systemd = self.systemd(connection).await?;
        let view = self.daemon.snapshot.read(&self.host, &systemd).await?;
        let (states, theirs) = (view.states(), view.portabled_images());
        let pool = self.host.pool.clone();
        let attached: Vec<String> = states.keys().cloned().collect();
        let (entries, states) = self
            .daemon
            .blocking(move || -> Result<_, Error> {
                let mut entries = pool.list()?;
                // A link in the search path to an image listed anyway (one
                // in the pool, or one attached from elsewhere) is that image,
                // listed once, under its own path.
                let listed: std::collections::HashSet<std::path::PathBuf> =
                    entries.iter().map(|e| e.path.clone()).chain(attached.iter().map(Into::into)).collect();
                entries.retain(|entry| {
                    let Ok(target) = std::fs::read_link(&entry.path) else { return true };
                    let target = entry.path.parent().map_or(target.clone(), |dir| dir.join(&target));
                    !listed.contains(&target)
                });
                let states = ops::with_sources(states);
                // Attached by path, from outside the search path: listed too.
                for path in attached {
                    if entries.iter().any(|e| e.path.as_os_str() == path.as_str()) {
                        continue;
                    }
                    let path = std::path::PathBuf::from(path);
                    // Only a file or directory is read: whoever owns the
                    // directory of an image attached by path could put a
                    // FIFO there, whose open would never return.
                    let readable = path.symlink_metadata().is_ok_and(|m| m.is_file() || m.is_dir());
                    if !readable {
                        tracing::warn!(path = %path.display(), "an attached image is neither a file nor a directory");
                        continue;
                    }
                    let name = path.file_name().and_then(|n| n.to_str()).map(crate::image::ImageName::new);
                    match name {
                        Some(Ok(name)) => match crate::image::PoolEntry::read(name, path.clone()) {
                            Ok(entry) => entries.push(entry),
                            Err(e) => tracing::warn!(path = %path.display(), "an attached image cannot be read: {e}"),
                        },
                        _ => tracing::warn!(path = %path.display(), "an attached image has no valid image name"),
                    }
                }
                Ok((entries, states))
            })
            .await?;
        Ok(entries
            .into_iter()
            .map(|entry| {
                let path = entry.path.display().to_string();
                let state = states.get(&path).copied().unwrap_or(State::Detached);
                let attached_by = if theirs.contains(&path) {
                    "portablectl"
                } else if state == State::Detached {
                    ""
                } else {
                    "wharf"
                };
                PortableImageEntry {
                    state: state.to_string(),
                    attached_by: attached_by.to_string(),
                    name: entry.name.to_string(),
                    kind: entry.kind.to_string(),
                    read_only: entry.read_only,
                    size: entry.size,
                    modified_usec: entry.modified_usec,
                    path,
                }
            })
            .collect())
    }

    /// Inspects an image the caller opened and passes as `fd`; `image`
    /// names it in the result. Root only: wharfd reads below the descriptor
    /// with its own rights, so for anyone else it would read what they may
    /// not (other users inspect in their own process, as `portable` does).
    async fn inspect_image(
        &self,
        image: String,
        fd: zbus::OwnedFd,
        prefixes: Vec<String>,
        cat: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<ImageInfo, BusError> {
        authorize(connection, &header, "inspecting an image through wharfd").await?;
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        self.daemon
            .blocking(move || {
                let inspection = crate::image::inspect::inspect_open(Path::new(&image), file, &prefixes)?;
                Ok(ImageInfo::from_inspection(inspection, cat))
            })
            .await
    }

    /// Attaches an image's units with a sandbox profile. Root, or polkit's `org.wharf1.portable.attach`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn attach_image(
        &self,
        image: String,
        prefixes: Vec<String>,
        profile: String,
        copy_mode: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = ImageRequest { image, prefixes, ..Default::default() };
        self.attach_one(request, profile, copy_mode, flags, connection, &header).await
    }

    /// [`Self::attach_image`] with options: `extensions` (`as`: extension
    /// images, names or paths, stacked on the image in order, as
    /// portablectl's extension option) and `image-policy` (`s`: the policy
    /// the image must satisfy and the attachment is pinned to). Root, or polkit's `org.wharf1.portable.attach`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn attach_image_with_options(
        &self,
        image: String,
        prefixes: Vec<String>,
        profile: String,
        copy_mode: String,
        flags: u64,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = request_with_options(image, prefixes, options)?;
        self.attach_one(request, profile, copy_mode, flags, connection, &header).await
    }

    /// Attaches several images (each with its own prefixes) in one
    /// transaction with one reload: all or none. Root, or polkit's `org.wharf1.portable.attach`.
    async fn attach_images(
        &self,
        images: Vec<String>,
        profile: String,
        copy_mode: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let change = self.begin_change(connection, &header, "attaching images").await?;
        let audit =
            images.iter().fold(Call::new(Kind::Attach, change.caller.clone()), |a, i| a.image(&self.host.pool, i));
        let (actions, copy) = audit.check(check_flags(flags).and_then(|a| Ok((a, self::copy_mode(&copy_mode)?))))?;
        let progress = Box::new(progress_reporter(connection, &header, "decompress"));
        let requests = images
            .into_iter()
            .map(|image| ImageRequest { image, prefixes: Vec::new(), ..Default::default() })
            .collect();
        let profile = profile_or_default(&profile);
        let result = ops::attach(&self.host, &change.systemd, requests, profile, copy, actions, progress).await;
        record(audit.profile(profile), flags, &result).await;
        Ok(result?.into())
    }

    /// Detaches an image (only its units matching `prefixes`, when given),
    /// removing exactly the files wharf wrote for it. Root, or polkit's `org.wharf1.portable.attach`.
    async fn detach_image(
        &self,
        image: String,
        prefixes: Vec<String>,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = ImageRequest { image, prefixes, ..Default::default() };
        self.detach_one(request, flags, connection, &header).await
    }

    /// [`Self::detach_image`] of an image attached with exactly these
    /// extensions (empty: with any). Root, or polkit's `org.wharf1.portable.attach`.
    async fn detach_image_with_extensions(
        &self,
        image: String,
        prefixes: Vec<String>,
        extensions: Vec<String>,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = ImageRequest { image, prefixes, extensions, ..Default::default() };
        self.detach_one(request, flags, connection, &header).await
    }

    /// Detaches several images in one transaction with one reload: all or
    /// none. Root, or polkit's `org.wharf1.portable.attach`.
    async fn detach_images(
        &self,
        images: Vec<String>,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let change = self.begin_change(connection, &header, "detaching images").await?;
        let audit =
            images.iter().fold(Call::new(Kind::Detach, change.caller.clone()), |a, i| a.image(&self.host.pool, i));
        let audit = cleaning(audit, flags);
        let actions = audit.check(check_flags(flags))?;
        if images.is_empty() {
            return audit.check(Err(BusError::InvalidArgument("no images to detach".into())));
        }
        let result = ops::detach_batch(&self.host, &change.systemd, images, actions).await;
        record(audit, flags, &result).await;
        Ok(result?.into())
    }

    /// Replaces the attached version of an image by this one, restarting
    /// the units that were running. Root, or polkit's `org.wharf1.portable.attach`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn reattach_image(
        &self,
        image: String,
        prefixes: Vec<String>,
        profile: String,
        copy_mode: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = ImageRequest { image, prefixes, ..Default::default() };
        self.reattach_one(request, profile, copy_mode, flags, connection, &header).await
    }

    /// [`Self::reattach_image`] with the options of
    /// [`Self::attach_image_with_options`]. Root, or polkit's `org.wharf1.portable.attach`.
    #[allow(clippy::too_many_arguments)] // the D-Bus signature, plus caller context
    async fn reattach_image_with_options(
        &self,
        image: String,
        prefixes: Vec<String>,
        profile: String,
        copy_mode: String,
        flags: u64,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OperationResult, BusError> {
        let request = request_with_options(image, prefixes, options)?;
        self.reattach_one(request, profile, copy_mode, flags, connection, &header).await
    }

    /// The image's path and state.
    async fn get_image_state(
        &self,
        image: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(String, String), BusError> {
        self.image_state(image, Vec::new(), connection).await
    }

    /// The image's path and state as attached with exactly these
    /// extensions (detached when attached with others; empty: with any).
    async fn get_image_state_with_extensions(
        &self,
        image: String,
        extensions: Vec<String>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(String, String), BusError> {
        self.image_state(image, extensions, connection).await
    }

    /// [`Self::get_image_state_with_extensions`], and the image's attached
    /// units: whether they are below /run, and for each its name, systemd's
    /// ActiveState and its UnitFileState (what `is-attached` shows in JSON;
    /// anyone may ask PID 1 the same).
    async fn get_image_units(
        &self,
        image: String,
        extensions: Vec<String>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(String, String, bool, Vec<(String, String, String)>), BusError> {
        let (path, state, view) = self.image_units(image, extensions, connection).await?;
        let mine: Vec<_> = view.wharf.of(&path).collect();
        let runtime = mine.first().is_some_and(|a| a.runtime);
        let units = mine
            .into_iter()
            .map(|a| {
                let file_state = view.files.get(&a.unit).cloned().unwrap_or_default();
                (a.unit.clone(), view.active_state(&a.unit).to_string(), file_state)
            })
            .collect();
        Ok((path, state, runtime, units))
    }

    /// Deletes an image; refused while attached or read-only. Root, or polkit's `org.wharf1.portable.attach`.
    async fn remove_image(
        &self,
        image: String,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let caller = authorize(connection, &header, "removing an image").await?;
        let _exclusive = self.daemon.change_lock("removing an image").await?;
        let audit = Call::new(Kind::Remove, caller).image_now(&self.host.pool, &image).await;
        let host = self.host.clone();
        let result = self.daemon.blocking(move || ops::remove(&host, &image)).await;
        audit.finish(&result).await;
        Ok(result?.display().to_string())
    }

    /// Downloads an image (raw, or a tar archive made a directory) from
    /// `url` into /var/lib/portables as `name` (empty: from the URL),
    /// checked as `verify` says. Root, or polkit's `org.wharf1.portable.attach`.
    async fn pull_image(
        &self,
        url: String,
        name: String,
        verify: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let store = crate::machine::store::Store::portables();
        let format = super::pull::Format::Any;
        let request = super::pull::Request { url, name, format, verify, flags, kind: "pull" };
        super::pull::pull(&self.daemon, &store, connection, &header, request).await
    }

    /// Pulls `reference` from an OCI registry into /var/lib/portables as
    /// `name` (empty: the repository's last component): a squashfs, with
    /// `NAME.service` made from the image config when the image has no
    /// unit of its own. Root, or polkit's `org.wharf1.portable.attach`.
    async fn pull_oci_image(
        &self,
        reference: String,
        name: String,
        flags: u64,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, BusError> {
        let store = crate::machine::store::Store::portables();
        let request = super::oci::Request { reference, name, flags, portable: true };
        super::oci::pull(&self.daemon, &store, connection, &header, request).await
    }

    /// Marks an image read-only (or writable again). Root, or polkit's `org.wharf1.portable.attach`.
    async fn mark_read_only(
        &self,
        image: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        let caller = authorize(connection, &header, "marking an image read-only").await?;
        let audit = Call::new(Kind::ReadOnly, caller).domain(Domain::Portable).image(&Pool::portables(), &image);
        let result = self.daemon.blocking(move || mark_read_only(&Pool::portables(), &image, read_only)).await;
        audit.field("WHARF_READ_ONLY", if read_only { "yes" } else { "no" }).finish(&result).await;
        result
    }
}

/// Shared by the portable and machine pools.
pub(crate) fn mark_read_only(pool: &Pool, image: &str, read_only: bool) -> Result<(), BusError> {
    let path = pool.locate(image, None)?;
    readonly::set_read_only(&path, read_only)?;
    tracing::info!(image = %path.display(), read_only, "marked read-only");
    Ok(())
}

impl From<Error> for BusError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        portable_bus_error(&error, message)
    }
}

/// An attach request with the options of `AttachImageWithOptions`; an
/// unknown option, or one of the wrong type, is refused in one line.
fn request_with_options(
    image: String,
    prefixes: Vec<String>,
    options: HashMap<String, OwnedVariant>,
) -> Result<ImageRequest, BusError> {
    let mut request = ImageRequest { image, prefixes, ..Default::default() };
    for (key, value) in options {
        let wrong = |wanted: &str| BusError::InvalidArgument(format!("option '{key}' must be {wanted}"));
        match key.as_str() {
            "extensions" => {
                request.extensions = Vec::<String>::try_from(value).map_err(|_| wrong("a list of strings"))?
            }
            "image-policy" => request.image_policy = Some(String::try_from(value).map_err(|_| wrong("a string"))?),
            _ => {
                return Err(BusError::InvalidArgument(format!(
                    "unknown option '{key}' (known: extensions, image-policy)"
                )));
            }
        }
    }
    Ok(request)
}

/// The D-Bus error for a portable error, carrying `message`.
pub(crate) fn portable_bus_error(error: &Error, message: String) -> BusError {
    match error {
        Error::RolledBack(inner) => portable_bus_error(inner, message),
        // The host is not as it was, whatever the first error was: not a
        // conflict or a bad image for the caller to fix and retry.
        Error::PartiallyRolledBack { .. } => BusError::Failed(message),
        Error::Image(image) => super::image_bus_error(image, message),
        Error::Profile(_)
        | Error::InvalidCopyMode(_)
        | Error::InvalidImagePath(_)
        | Error::NoReloadWithNow
        | Error::InvalidExtensionPath { .. }
        | Error::DuplicateExtension { .. } => BusError::InvalidArgument(message),
        Error::ExtensionDirectoriesUnsupported(..) | Error::ImagePolicyUnsupported(_) => BusError::Failed(message),
        Error::ImagePolicy(_) | Error::ImagePolicyOnDirectory(_) | Error::ImagePolicyFileSystems { .. } => {
            BusError::InvalidArgument(message)
        }
        Error::ImagePolicyRefuses { .. } => BusError::BadImage(message),
        Error::NoUnits(_) | Error::Install(_) | Error::HostExec { .. } => BusError::BadImage(message),
        Error::UnitExists { .. }
        | Error::Shadowed { .. }
        | Error::AttachedFrom { .. }
        | Error::AttachedByPortabled { .. }
        | Error::PortabledAttachment(_)
        | Error::AttachedOtherwise { .. }
        | Error::DuplicateUnit { .. }
        | Error::AlreadyAttached { .. } => BusError::Conflict(message),
        Error::ForeignDirectory { .. } => BusError::BadImage(message),
        Error::NotAttached(_) | Error::NoUnitsMatch { .. } | Error::OtherExtensions { .. } => {
            BusError::NoSuchImage(message)
        }
        Error::Attached(_) | Error::AttachedAsExtension { .. } | Error::Running { .. } | Error::ReadOnly(_) => {
            BusError::Busy(message)
        }
        Error::Systemd(_) | Error::Transaction(_) | Error::Io { .. } => BusError::Failed(message),
    }
}
