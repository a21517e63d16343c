//! wharf: portable services and machines on systemd hosts.
//!
//! The library holds all of wharf's logic; the `portable` and `machine`
//! binaries are thin D-Bus clients of `wharfd`, which does the privileged work.
//! A reader should find a thing by its domain noun:
//!
//! - [`image`]: finding, recognising and reading images (directories, raw
//!   file systems, GPT disk images, xz-compressed ones) without mounting them;
//! - [`portable`]: attaching an image's units to the host, the drop-ins and
//!   profiles that sandbox them, and detaching them again;
//! - [`pull`]: getting images from web servers, verified;
//! - [`api`]: the D-Bus contract between `wharfd` and its clients;
//! - [`daemon`]: `wharfd` itself;
//! - [`cli`]: the command lines of `portable` and `machine`.

pub mod api;
pub mod audit;
pub mod cli;
pub mod compress;
pub mod daemon;
pub mod executor;
pub mod fleet;
pub mod fs;
pub mod image;
pub mod logging;
pub mod machine;
pub mod portable;
pub mod pull;
pub mod systemd;
pub mod transaction;
