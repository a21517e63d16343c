//! Fleet rollout: a declarative file says what a host should run; apply
//! computes the plan against the host as it is and carries it out with one
//! systemd reload, all or nothing.

pub mod apply;
pub mod cache;
pub mod file;
pub mod health;
pub mod plan;

pub use file::{FleetFile, MachineWant, PortableWant};
pub use plan::{Plan, Step};
