//! Machines: OS images booted as containers, registered with
//! systemd-machined.
//!
//! - [`launcher`]: `wharfd launch`, wharf's own container launcher (the main
//!   process of a machine's unit), built from
//! - `container`: what happens inside the new namespaces before the
//!   image's init runs,
//! - [`raw`]: raw file system images on a loop device,
//! - [`cgroup`], [`uid_range`], [`ownership`], [`notify`], [`name`]: the
//!   parts that decide things (and are tested without root), and
//! - `sys`: the few kernel calls that need `unsafe`.

pub mod cgroup;
mod container;
pub mod launcher;
pub mod name;
pub mod notify;
pub mod ownership;
pub mod raw;
mod sys;
pub mod uid_range;

pub use name::{MachineName, NameError};
