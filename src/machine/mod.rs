//! Machines: OS images in /var/lib/machines, booted as containers.

pub mod copy;
pub mod name;
pub mod store;
