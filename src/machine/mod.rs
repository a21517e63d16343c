//! Machines: OS images booted as containers, registered with
//! systemd-machined.
//!
//! - [`launcher`]: `wharfd launch`, wharf's own container launcher (the main
//!   process of a machine's unit), built from
//! - `container`: what happens inside the new namespaces before the
//!   image's init runs,
//! - [`init`]: finding the image's init, and the signals and exit status
//!   it is spoken to with,
//! - [`files`]: bind mounts into machines and copies to and from them,
//! - [`pty`]: the console's and `machine shell --pty`'s terminals,
//! - [`raw`]: raw file system images on a loop device,
//! - [`lock`]: image locks shared with systemd-nspawn and machined,
//! - [`store`]: the image store (clone, rename, remove, import, export),
//!   with [`copy`] for trees and [`archive`] for tar archives of them,
//! - [`property`], [`config`]: resource limits and per-machine settings,
//!   [`nspawn_settings`]: systemd-nspawn's `.nspawn` files,
//! - [`cgroup`], [`uid_range`], [`ownership`], [`notify`], [`name`],
//!   [`capability`]: the parts that decide things (and are tested without
//!   root),
//! - [`network`]: `--network` and `--port`: veth pairs, zones, bridges,
//!   addresses, nftables rules,
//! - [`settings`]: wharf's own settings for machines in wharf.toml
//!   (how many boot at once),
//! - [`status`]: what `machine status` shows beyond machined's record,
//! - [`seccomp`]: the system call filter of a machine's init, and
//! - `sys`: the few kernel calls that need `unsafe`.

pub mod archive;
pub mod capability;
pub mod cgroup;
pub mod config;
mod container;
pub mod copy;
pub mod enter;
pub mod files;
pub mod init;
pub mod launcher;
pub mod layer;
pub mod lock;
pub mod name;
pub mod network;
pub mod notify;
pub mod nspawn_settings;
pub mod ops;
pub mod ownership;
pub mod property;
pub mod pty;
pub mod quota;
pub mod raw;
pub mod seccomp;
pub mod settings;
pub mod status;
pub mod store;
mod sys;
pub mod uid_range;

pub use name::{MachineName, NameError};
