//! Machines: OS images in /var/lib/machines, booted as containers.

pub mod config;
pub mod copy;
pub mod name;
pub mod property;
pub mod store;
