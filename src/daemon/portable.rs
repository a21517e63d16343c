//! `org.wharf1.Portable`: portable service images.

use std::path::Path;
use std::sync::Arc;

use zbus::Connection;
use zbus::message::Header;

use super::auth::require_root;
use super::{Daemon, failed};
use crate::api::{BusError, ImageEntry, ImageInfo};
use crate::image::{Pool, readonly};
use crate::portable::Attachments;

#[derive(Debug)]
pub(crate) struct PortableInterface {
    daemon: Arc<Daemon>,
}

impl PortableInterface {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        PortableInterface { daemon }
    }
}

#[zbus::interface(name = "org.wharf1.Portable")]
impl PortableInterface {
    /// Every image in the portable search path, with its attachment state.
    async fn list_images(&self) -> Result<Vec<ImageEntry>, BusError> {
        self.daemon.blocking(list_images).await
    }

    /// Inspects an image the caller opened (so wharfd reads only what the
    /// caller may read) and passes as `fd`; `image` names it in the result.
    async fn inspect_image(
        &self,
        image: String,
        fd: zbus::OwnedFd,
        prefixes: Vec<String>,
        cat: bool,
    ) -> Result<ImageInfo, BusError> {
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        self.daemon
            .blocking(move || {
                let inspection = crate::image::inspect::inspect_open(Path::new(&image), file, &prefixes)?;
                Ok(ImageInfo::from_inspection(inspection, cat))
            })
            .await
    }

    /// Marks an image read-only (or writable again). Root only.
    async fn mark_read_only(
        &self,
        image: String,
        read_only: bool,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), BusError> {
        require_root(connection, &header, "marking an image read-only").await?;
        self.daemon.blocking(move || mark_read_only(&Pool::portables(), &image, read_only)).await
    }
}

/// Shared by the portable and machine pools.
pub(crate) fn mark_read_only(pool: &Pool, image: &str, read_only: bool) -> Result<(), BusError> {
    let path = pool.locate(image, None)?;
    readonly::set_read_only(&path, read_only)?;
    tracing::info!(image = %path.display(), read_only, "marked read-only");
    Ok(())
}

fn list_images() -> Result<Vec<ImageEntry>, BusError> {
    let attachments = Attachments::scan(Path::new("/")).map_err(failed)?;
    let entries = Pool::portables().list().map_err(failed)?;
    Ok(entries
        .into_iter()
        .map(|entry| {
            let path = entry.path.display().to_string();
            ImageEntry {
                state: attachments.file_state(&path).to_string(),
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
