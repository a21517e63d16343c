//! The plan of an apply: from what the fleet file wants and what the host
//! has (a [`Snapshot`] taken before), the steps that bring the host there.
//! Pure: no I/O, so every case is a unit test.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::file::{MachineWant, PortableWant};
use crate::api::PlanStep;

/// What is attached on the host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedImage {
    /// Absolute path.
    pub image: String,
    /// The prefix of its name (`foobar` for `foobar_1.raw`).
    pub prefix: String,
    pub units: Vec<String>,
    pub runtime: bool,
    pub enabled: Vec<String>,
    pub active: Vec<String>,
}

/// What an earlier apply attached, and how: kept by wharfd so that apply
/// only ever detaches what apply put there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub portables: Vec<RecordedPortable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedPortable {
    pub image: String,
    pub profile: String,
    pub runtime: bool,
    pub properties: Vec<(String, String)>,
}

/// A wanted image once read: where it is and what it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPortable {
    pub want: PortableWant,
    /// Absolute path of the image attach will use (an xz image decompressed).
    pub image: String,
    pub prefix: String,
    pub units: Vec<String>,
    /// Units with an [Install] section (what `enabled` enables).
    pub installable: Vec<String>,
    /// Service units that are not templates (what `running` starts).
    pub services: Vec<String>,
}

/// The host as apply found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub attached: Vec<AttachedImage>,
    pub record: Record,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    Stop {
        units: Vec<String>,
    },
    Disable {
        units: Vec<String>,
    },
    Detach {
        image: String,
    },
    Attach {
        image: String,
        profile: String,
        runtime: bool,
    },
    /// A newer (or other) version replaces the attached one.
    Reattach {
        from: String,
        image: String,
        profile: String,
        runtime: bool,
    },
    /// The same image again, with other settings (profile, runtime, properties).
    Refresh {
        image: String,
        profile: String,
        runtime: bool,
    },
    Enable {
        units: Vec<String>,
    },
    Start {
        units: Vec<String>,
    },
    Restart {
        units: Vec<String>,
    },
    /// A machine image that is missing, imported from its source.
    ImportMachine {
        machine: String,
        source: String,
    },
    /// A machine's limits, kept in its settings file (and set live if it runs).
    SetLimits {
        machine: String,
        limits: Vec<String>,
    },
    EnableMachine {
        machine: String,
    },
    DisableMachine {
        machine: String,
    },
    StopMachine {
        machine: String,
    },
    StartMachine {
        machine: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how =
            |profile: &str, runtime: &bool| format!("(profile {profile}{})", if *runtime { ", runtime" } else { "" });
        match self {
            Step::Stop { units } => write!(f, "stop {}", units.join(" ")),
            Step::Disable { units } => write!(f, "disable {}", units.join(" ")),
            Step::Detach { image } => write!(f, "detach {image}"),
            Step::Attach { image, profile, runtime } => write!(f, "attach {image} {}", how(profile, runtime)),
            Step::Reattach { from, image, profile, runtime } => {
                write!(f, "reattach {from} -> {image} {}", how(profile, runtime))
            }
            Step::Refresh { image, profile, runtime } => {
                write!(f, "refresh {image} {} (settings changed)", how(profile, runtime))
            }
            Step::Enable { units } => write!(f, "enable {}", units.join(" ")),
            Step::Start { units } => write!(f, "start {}", units.join(" ")),
            Step::Restart { units } => write!(f, "restart {}", units.join(" ")),
            Step::ImportMachine { machine, source } => write!(f, "import machine {machine} from {source}"),
            Step::SetLimits { machine, limits } => write!(f, "set limits of machine {machine}: {}", limits.join(" ")),
            Step::EnableMachine { machine } => write!(f, "enable machine {machine}"),
            Step::DisableMachine { machine } => write!(f, "disable machine {machine}"),
            Step::StopMachine { machine } => write!(f, "stop machine {machine}"),
            Step::StartMachine { machine } => write!(f, "start machine {machine}"),
        }
    }
}

impl Step {
    /// The step's name, as `--json` and the bus give it.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Stop { .. } => "stop",
            Step::Disable { .. } => "disable",
            Step::Detach { .. } => "detach",
            Step::Attach { .. } => "attach",
            Step::Reattach { .. } => "reattach",
            Step::Refresh { .. } => "refresh",
            Step::Enable { .. } => "enable",
            Step::Start { .. } => "start",
            Step::Restart { .. } => "restart",
            Step::ImportMachine { .. } => "import-machine",
            Step::SetLimits { .. } => "set-limits",
            Step::EnableMachine { .. } => "enable-machine",
            Step::DisableMachine { .. } => "disable-machine",
            Step::StopMachine { .. } => "stop-machine",
            Step::StartMachine { .. } => "start-machine",
        }
    }
}

impl From<&Step> for PlanStep {
    fn from(step: &Step) -> PlanStep {
        let mut out = PlanStep { action: step.action().to_string(), ..PlanStep::default() };
        match step.clone() {
            Step::Stop { units }
            | Step::Disable { units }
            | Step::Enable { units }
            | Step::Start { units }
            | Step::Restart { units } => out.units = units,
            Step::Detach { image } => out.image = image,
            Step::Attach { image, profile, runtime } | Step::Refresh { image, profile, runtime } => {
                (out.image, out.profile, out.runtime) = (image, profile, runtime);
            }
            Step::Reattach { from, image, profile, runtime } => {
                (out.from, out.image, out.profile, out.runtime) = (from, image, profile, runtime);
            }
            Step::ImportMachine { machine, source } => (out.machine, out.source) = (machine, source),
            Step::SetLimits { machine, limits } => (out.machine, out.limits) = (machine, limits),
            Step::EnableMachine { machine }
            | Step::DisableMachine { machine }
            | Step::StopMachine { machine }
            | Step::StartMachine { machine } => out.machine = machine,
        }
        out
    }
}

impl TryFrom<PlanStep> for Step {
    type Error = String;
    fn try_from(step: PlanStep) -> Result<Step, String> {
        let PlanStep { action, units, image, from, profile, runtime, machine, source, limits } = step;
        Ok(match action.as_str() {
            "stop" => Step::Stop { units },
            "disable" => Step::Disable { units },
            "enable" => Step::Enable { units },
            "start" => Step::Start { units },
            "restart" => Step::Restart { units },
            "detach" => Step::Detach { image },
            "attach" => Step::Attach { image, profile, runtime },
            "refresh" => Step::Refresh { image, profile, runtime },
            "reattach" => Step::Reattach { from, image, profile, runtime },
            "import-machine" => Step::ImportMachine { machine, source },
            "set-limits" => Step::SetLimits { machine, limits },
            "enable-machine" => Step::EnableMachine { machine },
            "disable-machine" => Step::DisableMachine { machine },
            "stop-machine" => Step::StopMachine { machine },
            "start-machine" => Step::StartMachine { machine },
            _ => return Err(format!("unknown plan step '{action}'")),
        })
    }
}

/// When a step runs within an apply: every step of one phase runs before
/// any of the next. The file phases are one transaction, made in this
/// order (a link is made after its unit, and removed before it), followed
/// by one systemd reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The longest step, and one that changes nothing that runs.
    Import,
    StopMachines,
    StopUnits,
    /// Enablement links removed.
    Disable,
    /// Attachments removed.
    Detach,
    /// Attachments written or rewritten.
    Attachments,
    /// Enablement links made.
    Enable,
    /// Settings files written (and, after the reload, the limits set live).
    Limits,
    Restart,
    Start,
    StartMachines,
}

impl Step {
    pub fn phase(&self) -> Phase {
        match self {
            Step::ImportMachine { .. } => Phase::Import,
            Step::StopMachine { .. } => Phase::StopMachines,
            Step::Stop { .. } => Phase::StopUnits,
            Step::Disable { .. } | Step::DisableMachine { .. } => Phase::Disable,
            Step::Detach { .. } => Phase::Detach,
            Step::Attach { .. } | Step::Reattach { .. } | Step::Refresh { .. } => Phase::Attachments,
            Step::Enable { .. } | Step::EnableMachine { .. } => Phase::Enable,
            Step::SetLimits { .. } => Phase::Limits,
            Step::Restart { .. } => Phase::Restart,
            Step::Start { .. } => Phase::Start,
            Step::StartMachine { .. } => Phase::StartMachines,
        }
    }

    /// Whether the step is one of the file transaction's.
    pub fn changes_files(&self) -> bool {
        (Phase::Disable..=Phase::Limits).contains(&self.phase())
    }
}

/// The steps of an apply, in the order they are carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// A plan of `steps`, put in the order they run (steps of one phase
    /// keep theirs), so that a step's number is its place in the apply.
    pub fn new(mut steps: Vec<Step>) -> Plan {
        steps.sort_by_key(Step::phase);
        Plan { steps }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return f.write_str("No changes: the host is as the fleet file says.");
        }
        for (index, step) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {step}", index + 1)?;
        }
        Ok(())
    }
}

/// Plans the portable part of an apply. `prune` also detaches images
/// attached by hand that the file does not list.
pub fn plan_portables(wants: &[ResolvedPortable], host: &Snapshot, prune: bool) -> Plan {
    let mut stop = Vec::new();
    let mut disable = Vec::new();
    let mut detach = Vec::new();
    let mut attach = Vec::new();
    let mut enable = Vec::new();
    let mut start = Vec::new();
    let mut restart = Vec::new();

    // Images the file no longer wants: apply's own, or any with --prune.
    for current in &host.attached {
        let wanted = wants.iter().any(|w| w.image == current.image || replaces(w, current));
        let applied = host.record.portables.iter().any(|r| r.image == current.image);
        if !wanted && (applied || prune) {
            stop.extend(current.active.iter().cloned());
            disable.extend(current.enabled.iter().cloned());
            detach.push(Step::Detach { image: current.image.clone() });
        }
    }

    for want in wants {
        let same = host.attached.iter().find(|a| a.image == want.image);
        let previous = host.attached.iter().find(|a| a.image != want.image && replaces(want, a));
        let recorded = host.record.portables.iter().find(|r| r.image == want.image);
        let settings_match = recorded.is_some_and(|r| {
            r.profile == want.want.profile && r.runtime == want.want.runtime && r.properties == want.want.properties
        });
        // Other prefixes bring other units: the attachment must change too.
        let units_match = same.is_some_and(|current| same_set(&current.units, &want.units));
        let (files_change, was) = match (same, previous) {
            (Some(current), _) if settings_match && units_match && current.runtime == want.want.runtime => {
                (false, Some(current))
            }
            (Some(current), _) => {
                attach.push(Step::Refresh {
                    image: want.image.clone(),
                    profile: want.want.profile.clone(),
                    runtime: want.want.runtime,
                });
                (true, Some(current))
            }
            (None, Some(old)) => {
                attach.push(Step::Reattach {
                    from: old.image.clone(),
                    image: want.image.clone(),
                    profile: want.want.profile.clone(),
                    runtime: want.want.runtime,
                });
                (true, Some(old))
            }
            (None, None) => {
                attach.push(Step::Attach {
                    image: want.image.clone(),
                    profile: want.want.profile.clone(),
                    runtime: want.want.runtime,
                });
                (true, None)
            }
        };
        if let Some(old) = was.filter(|_| files_change) {
            // Units the new attachment no longer has go with the old one.
            stop.extend(old.active.iter().filter(|u| !want.units.contains(u)).cloned());
            disable.extend(old.enabled.iter().filter(|u| !want.units.contains(u)).cloned());
        }
        let enabled_now: &[String] = was.map_or(&[], |a| &a.enabled);
        let active_now: &[String] = was.map_or(&[], |a| &a.active);
        if want.want.enabled {
            enable.extend(want.installable.iter().filter(|u| !enabled_now.contains(u)).cloned());
        } else {
            disable.extend(enabled_now.iter().filter(|u| want.units.contains(u)).cloned());
        }
        for service in &want.services {
            let active = active_now.contains(service);
            match (want.want.running, active, files_change) {
                (true, true, true) => restart.push(service.clone()),
                (true, false, _) => start.push(service.clone()),
                (false, true, _) => stop.push(service.clone()),
                _ => {}
            }
        }
    }

    let mut steps = Vec::new();
    steps.extend(unit_step(stop, |units| Step::Stop { units }));
    steps.extend(unit_step(disable, |units| Step::Disable { units }));
    steps.extend(detach);
    steps.extend(attach);
    steps.extend(unit_step(enable, |units| Step::Enable { units }));
    steps.extend(unit_step(restart, |units| Step::Restart { units }));
    steps.extend(unit_step(start, |units| Step::Start { units }));
    Plan::new(steps)
}

/// Whether two lists hold the same names, in any order.
fn same_set(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// A step over units, sorted and without repeats; none for no units.
fn unit_step(mut units: Vec<String>, make: fn(Vec<String>) -> Step) -> Option<Step> {
    units.sort();
    units.dedup();
    (!units.is_empty()).then(|| make(units))
}

/// A machine as the host has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineState {
    pub name: String,
    pub image_present: bool,
    pub running: bool,
    pub enabled: bool,
    /// The limits of its settings file, as `Key=Value` words, sorted, and
    /// its `network=` and `port=` (the ports joined by commas) if it has them.
    pub saved_limits: Vec<String>,
}

/// The words of [`MachineState::saved_limits`] for a machine's network
/// settings (after its limits).
pub fn network_words(network: Option<&str>, ports: Option<&[crate::machine::network::Port]>) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(network) = network {
        words.push(format!("network={network}"));
    }
    if let Some(ports) = ports.filter(|p| !p.is_empty()) {
        words.push(format!("port={}", crate::machine::network::format_ports(ports)));
    }
    words
}

/// Plans the machine part of an apply: machines the file does not list are
/// left alone. Fails (before anything is done) for a machine whose image is
/// missing and that has no source to import it from.
pub fn plan_machines(wants: &[MachineWant], host: &[MachineState]) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for want in wants {
        let name = want.name.clone();
        let default = MachineState { name: name.clone(), ..MachineState::default() };
        let now = host.iter().find(|m| m.name == want.name).unwrap_or(&default);
        if !now.image_present {
            match &want.source {
                Some(source) => steps.push(Step::ImportMachine { machine: name.clone(), source: source.clone() }),
                None => {
                    return Err(format!("machine '{name}': its image is missing and no source is given"));
                }
            }
        }
        let mut limits: Vec<String> = want.limits.iter().map(|p| p.to_string()).collect();
        limits.sort();
        limits.extend(network_words(want.network.as_deref(), want.ports.as_deref()));
        // What the fleet file does not say of the network is the settings file's.
        let mut saved = now.saved_limits.clone();
        saved.retain(|w| {
            !(w.starts_with("network=") && want.network.is_none() || w.starts_with("port=") && want.ports.is_none())
        });
        if limits != saved {
            steps.push(Step::SetLimits { machine: name.clone(), limits });
        }
        match (want.enabled, now.enabled) {
            (true, false) => steps.push(Step::EnableMachine { machine: name.clone() }),
            (false, true) => steps.push(Step::DisableMachine { machine: name.clone() }),
            _ => {}
        }
        match (want.started, now.running) {
            (true, false) => steps.push(Step::StartMachine { machine: name }),
            (false, true) => steps.push(Step::StopMachine { machine: name }),
            _ => {}
        }
    }
    Ok(Plan::new(steps).steps)
}

/// Whether attaching `want` replaces `current`: another version of the
/// same image (same name prefix), or one holding the same units.
fn replaces(want: &ResolvedPortable, current: &AttachedImage) -> bool {
    current.prefix == want.prefix || current.units.iter().any(|u| want.units.contains(u))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn want(image: &str, running: bool, enabled: bool) -> ResolvedPortable {
        ResolvedPortable {
            want: PortableWant {
                image: image.into(),
                version: None,
                sha256: None,
                prefixes: vec![],
                profile: "default".into(),
                runtime: false,
                enabled,
                running,
                start_timeout: Duration::from_secs(30),
                health: None,
                properties: vec![],
            },
            image: image.into(),
            prefix: "foobar".into(),
            units: vec!["foobar-hello.service".into(), "foobar.service".into()],
            installable: vec!["foobar.service".into()],
            services: vec!["foobar-hello.service".into(), "foobar.service".into()],
        }
    }

    fn attached(image: &str, active: &[&str], enabled: &[&str]) -> AttachedImage {
        AttachedImage {
            image: image.into(),
            prefix: "foobar".into(),
            units: vec!["foobar-hello.service".into(), "foobar.service".into()],
            runtime: false,
            enabled: enabled.iter().map(|s| s.to_string()).collect(),
            active: active.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn recorded(image: &str) -> RecordedPortable {
        RecordedPortable { image: image.into(), profile: "default".into(), runtime: false, properties: vec![] }
    }

    fn lines(plan: &Plan) -> Vec<String> {
        plan.steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_image_is_attached_enabled_and_started() {
        let mut w = want("/p/foobar_1.raw", true, true);
        w.services = vec!["foobar.service".into()];
        let plan = plan_portables(&[w], &Snapshot::default(), false);
        assert_eq!(
            lines(&plan),
            ["attach /p/foobar_1.raw (profile default)", "enable foobar.service", "start foobar.service"]
        );
    }

    #[test]
    fn applying_again_changes_nothing() {
        let mut w = want("/p/foobar_1.raw", true, true);
        w.services = vec!["foobar.service".into()];
        let host = Snapshot {
            attached: vec![attached("/p/foobar_1.raw", &["foobar.service"], &["foobar.service"])],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        let plan = plan_portables(&[w], &host, false);
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.to_string(), "No changes: the host is as the fleet file says.");
    }

    #[test]
    fn a_new_version_is_reattached_and_running_services_restarted() {
        let mut w = want("/p/foobar_2.raw", true, false);
        w.services = vec!["foobar.service".into()];
        let host = Snapshot {
            attached: vec![attached("/p/foobar_1.raw", &["foobar.service"], &[])],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        let plan = plan_portables(&[w], &host, false);
        assert_eq!(
            lines(&plan),
            ["reattach /p/foobar_1.raw -> /p/foobar_2.raw (profile default)", "restart foobar.service"]
        );
    }

    #[test]
    fn changed_settings_refresh_the_same_image() {
        let mut w = want("/p/foobar_1.raw", false, false);
        w.want.profile = "strict".into();
        let host = Snapshot {
            attached: vec![attached("/p/foobar_1.raw", &[], &[])],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        assert_eq!(
            lines(&plan_portables(&[w], &host, false)),
            ["refresh /p/foobar_1.raw (profile strict) (settings changed)"]
        );
    }

    #[test]
    fn other_prefixes_refresh_the_image_and_drop_the_units_they_leave_out() {
        let mut w = want("/p/foobar_1.raw", true, false);
        w.want.prefixes = vec!["foobar-hello".into()];
        w.units = vec!["foobar-hello.service".into()];
        w.services = vec!["foobar-hello.service".into()];
        let host = Snapshot {
            attached: vec![attached(
                "/p/foobar_1.raw",
                &["foobar.service", "foobar-hello.service"],
                &["foobar.service"],
            )],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        assert_eq!(
            lines(&plan_portables(&[w], &host, false)),
            [
                "stop foobar.service",
                "disable foobar.service",
                "refresh /p/foobar_1.raw (profile default) (settings changed)",
                "restart foobar-hello.service"
            ]
        );
    }

    #[test]
    fn only_what_apply_attached_is_detached_unless_pruning() {
        let host = Snapshot {
            attached: vec![
                attached("/p/foobar_1.raw", &["foobar.service"], &["foobar.service"]),
                AttachedImage {
                    image: "/p/byhand.raw".into(),
                    prefix: "byhand".into(),
                    units: vec!["byhand.service".into()],
                    runtime: false,
                    enabled: vec![],
                    active: vec![],
                },
            ],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        assert_eq!(
            lines(&plan_portables(&[], &host, false)),
            ["stop foobar.service", "disable foobar.service", "detach /p/foobar_1.raw"]
        );
        assert_eq!(
            lines(&plan_portables(&[], &host, true)),
            ["stop foobar.service", "disable foobar.service", "detach /p/foobar_1.raw", "detach /p/byhand.raw"]
        );
    }

    #[test]
    fn stopping_and_disabling_follow_the_file() {
        let w = want("/p/foobar_1.raw", false, false);
        let host = Snapshot {
            attached: vec![attached("/p/foobar_1.raw", &["foobar.service"], &["foobar.service"])],
            record: Record { portables: vec![recorded("/p/foobar_1.raw")] },
        };
        assert_eq!(lines(&plan_portables(&[w], &host, false)), ["stop foobar.service", "disable foobar.service"]);
    }

    fn machine(name: &str, started: bool, limits: &[&str]) -> MachineWant {
        MachineWant {
            name: name.into(),
            source: Some(format!("/srv/{name}.tar.xz")),
            started,
            enabled: false,
            limits: limits.iter().map(|l| crate::machine::property::Property::parse(l).unwrap()).collect(),
            network: None,
            ports: None,
            health: None,
        }
    }

    #[test]
    fn a_machines_network_is_kept_with_its_limits() {
        let mut want = machine("f28", false, &[]);
        want.network = Some("veth".into());
        want.ports = Some(vec!["8080:80".parse().unwrap()]);
        let now = MachineState { name: "f28".into(), image_present: true, ..MachineState::default() };
        let steps = plan_machines(std::slice::from_ref(&want), std::slice::from_ref(&now)).unwrap();
        assert_eq!(steps[0].to_string(), "set limits of machine f28: network=veth port=tcp:8080:80");
        let saved =
            MachineState { saved_limits: vec!["network=veth".into(), "port=tcp:8080:80".into()], ..now.clone() };
        assert!(plan_machines(std::slice::from_ref(&want), std::slice::from_ref(&saved)).unwrap().is_empty());
        // Unsaid in the fleet file: the settings file's network stays.
        let silent = machine("f28", false, &[]);
        assert!(plan_machines(&[silent], &[saved]).unwrap().is_empty());
    }

    #[test]
    fn machines_are_imported_limited_and_started() {
        let steps = plan_machines(&[machine("f28", true, &["MemoryMax=512M"])], &[]).unwrap();
        let lines: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            lines,
            [
                "import machine f28 from /srv/f28.tar.xz",
                "set limits of machine f28: MemoryMax=536870912",
                "start machine f28"
            ]
        );
        let running = MachineState {
            name: "f28".into(),
            image_present: true,
            running: true,
            enabled: false,
            saved_limits: vec!["MemoryMax=536870912".into()],
        };
        assert!(
            plan_machines(&[machine("f28", true, &["MemoryMax=512M"])], std::slice::from_ref(&running))
                .unwrap()
                .is_empty()
        );
        let stop = plan_machines(&[machine("f28", false, &["MemoryMax=512M"])], &[running]).unwrap();
        assert_eq!(stop, [Step::StopMachine { machine: "f28".into() }]);
        let mut sourceless = machine("f29", true, &[]);
        sourceless.source = None;
        assert_eq!(
            plan_machines(&[sourceless], &[]).unwrap_err(),
            "machine 'f29': its image is missing and no source is given"
        );
    }

    /// Steps are numbered in the order they run: machine imports and stops
    /// first, the file steps, then restarts, starts and boots.
    #[test]
    fn a_plan_lists_its_steps_in_the_order_they_run() {
        let units = |u: &str| vec![u.to_string()];
        let machine = || "m".to_string();
        let plan = Plan::new(vec![
            Step::Start { units: units("a.service") },
            Step::Restart { units: units("b.service") },
            Step::Enable { units: units("a.service") },
            Step::Attach { image: "/p/a.raw".into(), profile: "default".into(), runtime: false },
            Step::Stop { units: units("c.service") },
            Step::StartMachine { machine: machine() },
            Step::SetLimits { machine: machine(), limits: vec!["MemoryMax=1".into()] },
            Step::EnableMachine { machine: machine() },
            Step::Detach { image: "/p/c.raw".into() },
            Step::Disable { units: units("c.service") },
            Step::StopMachine { machine: "n".into() },
            Step::ImportMachine { machine: machine(), source: "m.tar".into() },
        ]);
        let actions: Vec<&str> = plan.steps.iter().map(Step::action).collect();
        assert_eq!(
            actions,
            [
                "import-machine",
                "stop-machine",
                "stop",
                "disable",
                "detach",
                "attach",
                "enable",
                "enable-machine",
                "set-limits",
                "restart",
                "start",
                "start-machine"
            ]
        );
        let phases: Vec<Phase> = plan.steps.iter().map(Step::phase).collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Every step crosses the bus as a typed struct and comes back the same.
    #[test]
    fn steps_survive_the_bus() {
        let steps = [
            Step::Reattach {
                from: "/p/a_1.raw".into(),
                image: "/p/a_2.raw".into(),
                profile: "strict".into(),
                runtime: true,
            },
            Step::Stop { units: vec!["a.service".into(), "b.service".into()] },
            Step::SetLimits { machine: "m".into(), limits: vec!["MemoryMax=1".into()] },
            Step::ImportMachine { machine: "m".into(), source: "m.tar".into() },
            Step::Detach { image: "/p/c.raw".into() },
            Step::StartMachine { machine: "m".into() },
        ];
        for step in steps {
            let bus = PlanStep::from(&step);
            assert_eq!(bus.action, step.action());
            // The --json view keeps the shape it had: serde's tag is the action.
            let json = serde_json::to_value(&step).unwrap();
            assert_eq!(json["action"], step.action());
            assert_eq!(Step::try_from(bus).unwrap(), step);
        }
        let unknown = PlanStep { action: "reboot".into(), ..PlanStep::default() };
        assert_eq!(Step::try_from(unknown).unwrap_err(), "unknown plan step 'reboot'");
    }

    #[test]
    fn a_hand_attached_image_listed_in_the_file_is_adopted() {
        let w = want("/p/foobar_1.raw", false, false);
        let host = Snapshot { attached: vec![attached("/p/foobar_1.raw", &[], &[])], record: Record::default() };
        assert_eq!(
            lines(&plan_portables(&[w], &host, false)),
            ["refresh /p/foobar_1.raw (profile default) (settings changed)"]
        );
    }
}
