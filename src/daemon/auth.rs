//! Who may change state. Root may, always; anyone else when polkit says
//! so for the call's action (`units/org.wharf1.policy`), and, where no
//! polkit answers on the bus, nobody else. Anyone may look.

use std::collections::HashMap;

use zbus::Connection;
use zbus::Variant;
use zbus::message::{Flags, Header};

use crate::api::BusError;
use crate::audit::{self, Caller};

/// The polkit actions wharfd asks about, one per kind of change; their
/// defaults are in `units/org.wharf1.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Attach, detach, reattach, remove, read-only, set-limit, pull of portable images.
    PortableAttach,
    /// Machines and their images: start, stop, import, export, set-property, ...
    MachineManage,
    /// A shell or a login prompt in a machine: root inside it.
    MachineShell,
    /// Applying a fleet file.
    FleetApply,
}

impl Action {
    #[cfg(test)]
    pub(crate) const ALL: [Action; 4] =
        [Action::PortableAttach, Action::MachineManage, Action::MachineShell, Action::FleetApply];

    pub(crate) fn id(self) -> &'static str {
        match self {
            Action::PortableAttach => "org.wharf1.portable.attach",
            Action::MachineManage => "org.wharf1.machine.manage",
            Action::MachineShell => "org.wharf1.machine.shell",
            Action::FleetApply => "org.wharf1.fleet.apply",
        }
    }
}

/// The action that lets a non-root caller make this call; `None`: root
/// only. `Portable.InspectImage` stays root's: wharfd reads below the
/// caller's descriptor with its own rights, and `portable` inspects in
/// the caller's own process for everyone else.
pub(crate) fn action_for(interface: &str, member: &str) -> Option<Action> {
    match (interface, member) {
        (
            "org.wharf1.Portable",
            "AttachImage"
            | "AttachImageWithOptions"
            | "AttachImages"
            | "DetachImage"
            | "DetachImageWithExtensions"
            | "DetachImages"
            | "ReattachImage"
            | "ReattachImageWithOptions"
            | "RemoveImage"
            | "MarkReadOnly"
            | "SetImageLimit"
            | "PullImage"
            | "PullOciImage",
        ) => Some(Action::PortableAttach),
        ("org.wharf1.Machine", "Shell" | "OpenLogin") => Some(Action::MachineShell),
        (
            "org.wharf1.Machine",
            "MarkReadOnly"
            | "CloneImage"
            | "RenameImage"
            | "RemoveImage"
            | "ImportTar"
            | "ImportRaw"
            | "ImportImage"
            | "ImportFs"
            | "PullImage"
            | "PullOciImage"
            | "ExportTar"
            | "ExportRaw"
            | "StartMachine"
            | "SignalMachine"
            | "TerminateMachine"
            | "KillMachine"
            | "SetMachineProperties"
            | "EnableMachine"
            | "BindMountMachine"
            | "CopyToMachine"
            | "CopyFromMachine"
            | "SetImageLimit"
            | "CleanImages"
            | "CancelTransfer",
        ) => Some(Action::MachineManage),
        ("org.wharf1.Fleet", "Apply") => Some(Action::FleetApply),
        _ => None,
    }
}

/// polkit's `CheckAuthorization` flag: the caller may be asked (by its
/// authentication agent) for a password.
const ALLOW_USER_INTERACTION: u32 = 1;

/// The polkit flags for a call: interaction only when the caller said it
/// waits for it, with the message's ALLOW_INTERACTIVE_AUTHORIZATION flag.
fn polkit_flags(message_flags: Flags) -> u32 {
    if message_flags.contains(Flags::ALLOW_INTERACTIVE_AUTH) { ALLOW_USER_INTERACTION } else { 0 }
}

fn root_only(what: &str, uid: u32) -> String {
    format!("access denied: {what} needs root (caller is uid {uid})")
}

fn not_authorized(what: &str, action: Action, uid: u32) -> String {
    format!("access denied: {what} needs authorization for {} (caller is uid {uid})", action.id())
}

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    /// `subject` is (kind, details); returns (authorized, challenge, details).
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: &HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// What polkit said about a caller and an action.
enum Answer {
    Yes,
    No,
    /// polkit answered with an error of its own (an action it does not know, ...).
    Failed(String),
    /// No polkit on the bus: none owns its name and none can be activated
    /// (not installed, masked, failing to start).
    Absent,
}

/// Whether polkit errors are polkit's own answer, rather than the bus
/// saying that no polkit is there to give one.
fn is_polkit_error(name: &str) -> bool {
    name.starts_with("org.freedesktop.PolicyKit1.")
}

async fn ask_polkit(connection: &Connection, sender: &str, action: Action, flags: u32) -> Answer {
    // No property cache: it would subscribe to signals on every call.
    let builder = AuthorityProxy::builder(connection).cache_properties(zbus::proxy::CacheProperties::No);
    let authority = match builder.build().await {
        Ok(authority) => authority,
        Err(_) => return Answer::Absent,
    };
    let subject = ("system-bus-name", HashMap::from([("name", Variant::from(sender))]));
    // A polkitd that never answers must not hold the call for good: a
    // password may take the caller a while (the longer deadline), a plain
    // check does not. Out of time is a refusal, not "no polkit".
    let deadlines = crate::systemd::Deadlines::get();
    let limit = if flags & ALLOW_USER_INTERACTION != 0 { deadlines.undo } else { deadlines.call };
    let details = HashMap::new();
    let check = authority.check_authorization(&subject, action.id(), &details, flags, "");
    let answer = match crate::systemd::until(std::time::Instant::now() + limit, check).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Answer::Failed(format!("it did not answer within {} s", limit.as_secs())),
        Err(e) => return Answer::Failed(e.to_string()),
    };
    match answer {
        Ok((true, _, _)) => Answer::Yes,
        Ok((false, _, _)) => Answer::No,
        Err(zbus::Error::MethodError(name, description, _)) if is_polkit_error(name.as_str()) => {
            Answer::Failed(description.unwrap_or_else(|| name.to_string()))
        }
        // The bus's own errors (ServiceUnknown, NameHasNoOwner, a unit
        // that is masked or fails to start, no reply): no polkit to ask,
        // so the rule without it holds, which is the stricter one.
        Err(e) => {
            tracing::debug!("polkit not asked: {e}");
            Answer::Absent
        }
    }
}

/// Lets the call proceed if it comes from root, or from a caller polkit
/// authorizes for the call's action (see [`action_for`]); otherwise
/// refuses it, logging the refusal in the audit trail. `what` says what
/// was refused. Returns the caller, read while the call is in flight, for
/// the call's audit entry (which names the action that authorized it).
pub(crate) async fn authorize(connection: &Connection, header: &Header<'_>, what: &str) -> Result<Caller, BusError> {
    let mut caller = Caller::of(connection, header).await?;
    if caller.uid == 0 {
        return Ok(caller);
    }
    let interface = header.interface().map(|i| i.as_str());
    let action = interface.zip(header.member()).and_then(|(interface, member)| action_for(interface, member.as_str()));
    let reason = match action {
        None => root_only(what, caller.uid),
        Some(action) => {
            let flags = polkit_flags(header.primary().flags());
            match ask_polkit(connection, &caller.bus_name, action, flags).await {
                Answer::Yes => {
                    caller.authorized_by = Some(action.id());
                    return Ok(caller);
                }
                Answer::No => not_authorized(what, action, caller.uid),
                Answer::Failed(message) => {
                    format!("{}: polkit: {message}", not_authorized(what, action, caller.uid))
                }
                Answer::Absent => root_only(what, caller.uid),
            }
        }
    };
    audit::refused(&caller, what, audit::domain_of(interface), &reason);
    Err(BusError::AccessDenied(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods of an interface in the introspection XML wharf installs.
    fn methods(interface: &str) -> Vec<String> {
        let xml = include_str!("../../dbus/org.wharf1.xml");
        let start = xml.find(&format!("<interface name=\"{interface}\"")).expect("interface in the XML");
        let body = &xml[start..start + xml[start..].find("</interface>").expect("closed")];
        body.split("<method name=\"").skip(1).map(|rest| rest[..rest.find('"').unwrap()].to_string()).collect()
    }

    #[test]
    fn every_method_has_its_action_or_is_a_read() {
        // What anyone may call (reads, and what a caller does to its own
        // transfers), and what stays root's.
        let open = [
            ("org.wharf1.Portable", "ListImages"),
            ("org.wharf1.Portable", "GetImageState"),
            ("org.wharf1.Portable", "GetImageStateWithExtensions"),
            ("org.wharf1.Portable", "GetImageUnits"),
            ("org.wharf1.Portable", "InspectImage"),
            ("org.wharf1.Machine", "ListImages"),
            ("org.wharf1.Machine", "ListMachines"),
            ("org.wharf1.Machine", "GetMachine"),
            ("org.wharf1.Machine", "ListTransfers"),
        ];
        for interface in ["org.wharf1.Portable", "org.wharf1.Machine", "org.wharf1.Fleet"] {
            let methods = methods(interface);
            assert!(methods.len() > 1 || interface == "org.wharf1.Fleet", "{interface}: {methods:?}");
            for method in methods {
                let expected = !open.contains(&(interface, method.as_str()));
                assert_eq!(action_for(interface, &method).is_some(), expected, "{interface}.{method}");
            }
        }
    }

    #[test]
    fn changes_map_to_their_kind() {
        assert_eq!(action_for("org.wharf1.Portable", "AttachImage"), Some(Action::PortableAttach));
        assert_eq!(action_for("org.wharf1.Portable", "PullImage"), Some(Action::PortableAttach));
        assert_eq!(action_for("org.wharf1.Machine", "PullImage"), Some(Action::MachineManage));
        assert_eq!(action_for("org.wharf1.Machine", "StartMachine"), Some(Action::MachineManage));
        assert_eq!(action_for("org.wharf1.Machine", "Shell"), Some(Action::MachineShell));
        assert_eq!(action_for("org.wharf1.Machine", "OpenLogin"), Some(Action::MachineShell));
        assert_eq!(action_for("org.wharf1.Fleet", "Apply"), Some(Action::FleetApply));
        // Root only, and names of one interface do not count on another.
        assert_eq!(action_for("org.wharf1.Portable", "InspectImage"), None);
        assert_eq!(action_for("org.wharf1.Portable", "Shell"), None);
        assert_eq!(action_for("org.wharf1.Manager", "AttachImage"), None);
    }

    #[test]
    fn the_policy_file_declares_exactly_the_actions() {
        let policy = include_str!("../../units/org.wharf1.policy");
        let declared: Vec<&str> =
            policy.split("<action id=\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect();
        let ours: Vec<&str> = Action::ALL.iter().map(|a| a.id()).collect();
        assert_eq!(declared, ours);
        // Changes need an administrator's password, kept for a while; never
        // granted to a caller outside a session.
        for action in policy.split("<action id=\"").skip(1) {
            assert!(action.contains("<allow_any>no</allow_any>"), "{action}");
            assert!(action.contains("<allow_inactive>auth_admin</allow_inactive>"), "{action}");
            assert!(action.contains("<allow_active>auth_admin_keep</allow_active>"), "{action}");
        }
    }

    #[test]
    fn polkit_may_ask_only_when_the_caller_waits_for_it() {
        assert_eq!(polkit_flags(Flags::empty()), 0);
        assert_eq!(polkit_flags(Flags::NO_AUTO_START), 0);
        assert_eq!(polkit_flags(Flags::ALLOW_INTERACTIVE_AUTH), ALLOW_USER_INTERACTION);
        assert_eq!(polkit_flags(Flags::ALLOW_INTERACTIVE_AUTH | Flags::NO_AUTO_START), ALLOW_USER_INTERACTION);
    }

    #[test]
    fn refusals_name_the_call_and_what_it_needs() {
        assert_eq!(
            root_only("attaching an image", 1000),
            "access denied: attaching an image needs root (caller is uid 1000)"
        );
        assert_eq!(
            not_authorized("attaching an image", Action::PortableAttach, 65534),
            "access denied: attaching an image needs authorization for org.wharf1.portable.attach (caller is uid 65534)"
        );
        assert!(is_polkit_error("org.freedesktop.PolicyKit1.Error.Failed"));
        assert!(!is_polkit_error("org.freedesktop.DBus.Error.ServiceUnknown"));
        assert!(!is_polkit_error("org.freedesktop.systemd1.UnitMasked"));
    }
}
