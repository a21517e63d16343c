//! `org.wharf1.Manager`: facts about the daemon itself.

#[derive(Debug)]
pub(crate) struct ManagerInterface;

#[zbus::interface(name = "org.wharf1.Manager")]
impl ManagerInterface {
    /// wharfd's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
}
