//! Machine lifecycle as wharfd runs it: a machine is a transient service in
//! machine.slice (`wharf-NAME.service`, `Delegate=yes`, `Type=notify`)
//! whose main process is wharf's launcher; its limits are the unit's
//! cgroup properties, set at start and changed live through systemd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zbus::OwnedVariant;
use zbus_systemd::machine1::ManagerProxy as Machined;

use super::capability;
use super::config::{CONFIG_DIR, MachineConfig};
use super::files::BindSpec;
use super::init::{EXIT_REBOOT, INITS};
use super::launcher::{LaunchArgs, Network};
use super::name::validate;
use super::ownership::Ownership;
use super::property::{LIMITS, Limit, Property, Value, format_value};
use super::store::Store;
use super::uid_range::PrivateUsers;
use crate::image::ImageKind;
use crate::image::inspect::open;
use crate::systemd::{JobOutcome, Systemd};

/// The launcher, as installed.
pub const LAUNCHER: &str = "/usr/lib/wharf/wharfd";
/// The unit that starts a machine at boot when enabled (wanted by machines.target).
pub const BOOT_UNIT_TEMPLATE: &str = "wharf-machine@.service";
/// What `poweroff` sends a machine's init (fleet apply stops machines so).
pub use super::init::poweroff_signal;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] super::name::NameError),
    #[error(transparent)]
    Store(#[from] super::store::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(transparent)]
    Nspawn(#[from] super::nspawn_settings::NspawnError),
    #[error(transparent)]
    Property(#[from] super::property::PropertyError),
    #[error("machine '{machine}': {source}")]
    Systemd {
        machine: String,
        #[source]
        source: crate::systemd::Error,
    },
    #[error("machine '{machine}': machined: {source}")]
    Machined {
        machine: String,
        #[source]
        source: zbus::Error,
    },
    #[error("machine '{0}' is running already")]
    Running(String),
    #[error("machine '{machine}': {source}")]
    Locked {
        machine: String,
        #[source]
        source: super::lock::LockError,
    },
    #[error("machine '{machine}' was not started by wharf (it runs in {unit}): {what}")]
    NotOurs { machine: String, unit: String, what: &'static str },
    #[error("machine '{0}' is not running")]
    NotRunning(String),
    #[error("machine '{machine}': the image has no init ({})", INITS.join(", "))]
    NoInit { machine: String },
    #[error(
        "machine '{machine}': {kind} images cannot be booted (only directories, raw squashfs, ext4 or erofs images and GPT disks)"
    )]
    CannotBoot { machine: String, kind: ImageKind },
    #[error(
        "machine '{machine}': the GPT disk has no root partition for {architecture} (a /usr partition alone does not boot)"
    )]
    NoRootPartition { machine: String, architecture: &'static str },
    #[error("machine '{machine}': {source}")]
    ImagePolicy {
        machine: String,
        #[source]
        source: crate::image::policy::Error,
    },
    #[error("machine '{machine}': an image policy applies to image files; a directory image has no partitions")]
    ImagePolicyOnDirectory { machine: String },
    #[error("machine '{machine}': the image does not satisfy the image policy '{policy}': {why}")]
    ImagePolicyRefuses { machine: String, policy: String, why: String },
    #[error("machine '{machine}' failed to start: {reason} (see journalctl -u {unit})")]
    StartFailed { machine: String, unit: String, reason: String },
    #[error("machine '{0}' did not stop within {1:?}")]
    StopTimeout(String, Duration),
    #[error("machine '{machine}': {source}")]
    Network {
        machine: String,
        #[source]
        source: super::network::SpecError,
    },
    #[error("machine '{machine}': network: {source}")]
    NetworkSetup {
        machine: String,
        #[source]
        source: super::network::host::NetError,
    },
    #[error("machine '{machine}': '{value}' is not a valid {what}")]
    Invalid { machine: String, what: &'static str, value: String },
    #[error("machine '{machine}': bind source {} does not exist", path.display())]
    NoBindSource { machine: String, path: PathBuf },
    #[error("machine '{machine}': {source}")]
    Bind {
        machine: String,
        #[source]
        source: super::files::FilesError,
    },
    /// `[machines]` of wharf.toml is wrong (see `settings`).
    #[error("{0}")]
    Settings(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The unit a machine runs in.
pub fn unit_name(machine: &str) -> String {
    format!("wharf-{machine}.service")
}

/// The boot unit of a machine (enabled by `machine enable`).
pub fn boot_unit(machine: &str) -> String {
    format!("wharf-machine@{machine}.service")
}

/// What `machine start` asks for beyond the name.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub machine: String,
    /// Limits given on the command line, over those of the machine's settings file.
    pub properties: Vec<Property>,
    pub private_users: Option<String>,
    /// How the image's files get the range's owners (auto, idmap or chown).
    pub private_users_ownership: Option<String>,
    pub network: Option<String>,
    /// Ports forwarded to the machine, comma-separated
    /// (`[tcp:|udp:]HOST[:MACHINE]`); `None`: those of its settings file.
    pub ports: Option<String>,
    /// Capabilities kept beyond nspawn's default (`CAP_A,CAP_B` or `all`).
    pub capability: Option<String>,
    /// Capabilities dropped from the bounding set.
    pub drop_capability: Option<String>,
    pub no_new_privileges: Option<bool>,
    /// Bind mounts from the host (`--bind=`, `--bind-ro=`), after those of
    /// the machine's settings file.
    pub binds: Vec<BindSpec>,
    /// `VAR=VALUE` for the init (`--setenv=`), after those of the `.nspawn` file.
    pub environment: Vec<String>,
    /// How long to wait for the container's init to report ready.
    pub ready_timeout: Duration,
    /// An image policy in systemd's syntax the image must satisfy
    /// (`--image-policy=`).
    pub image_policy: Option<String>,
}

impl StartRequest {
    /// A start with the machine's own settings only.
    pub fn with_settings(machine: &str, ready_timeout: Duration) -> StartRequest {
        StartRequest {
            machine: machine.to_string(),
            properties: Vec::new(),
            private_users: None,
            private_users_ownership: None,
            network: None,
            ports: None,
            capability: None,
            drop_capability: None,
            no_new_privileges: None,
            binds: Vec::new(),
            environment: Vec::new(),
            ready_timeout,
            image_policy: None,
        }
    }
}

/// How a start went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub unit: String,
    /// The container's init said it was ready (else the wait timed out and
    /// the machine goes on booting).
    pub ready: bool,
}

/// The machines context: the image store and where settings live.
#[derive(Debug, Clone)]
pub struct Machines {
    pub store: Store,
    pub config_dir: PathBuf,
    /// Where trusted `.nspawn` files are looked for, in order.
    pub nspawn_dirs: Vec<PathBuf>,
}

impl Machines {
    pub fn system() -> Machines {
        Machines {
            store: Store::machines(),
            config_dir: PathBuf::from(CONFIG_DIR),
            nspawn_dirs: super::nspawn_settings::TRUSTED_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Boots a machine: checks what can be checked first (name, image, init,
    /// settings, not running), then starts its unit and waits for readiness.
    pub async fn start(&self, systemd: &Systemd, machined: &Machined<'_>, request: StartRequest) -> Result<Started> {
        let machine = validate(&request.machine)?.to_string();
        if is_running(machined, &machine).await? {
            return Err(Error::Running(machine));
        }
        let (store, config_dir, name) = (self.store.clone(), self.config_dir.clone(), machine.clone());
        let nspawn_dirs = self.nspawn_dirs.clone();
        let request_binds = request.binds.clone();
        let image_policy = request.image_policy.clone();
        let (image, kind, config) = zruntime::unblock(move || -> Result<_> {
            let image = store.locate(&name)?;
            let kind = ImageKind::detect(&image)?;
            if !matches!(
                kind,
                ImageKind::Directory | ImageKind::Squashfs | ImageKind::Ext4 | ImageKind::Erofs | ImageKind::Gpt
            ) {
                return Err(Error::CannotBoot { machine: name, kind });
            }
            check_image(&name, &image, kind, image_policy.as_deref())?;
            check_init(&name, &image, kind)?;
            // Refused here, before any unit exists, when nspawn (or a wharf
            // machine of another name) runs the image; the launcher takes
            // the lock for good.
            super::lock::lock_image(&image, super::lock::LockMode::Exclusive)
                .map_err(|source| Error::Locked { machine: name.clone(), source })?;
            let config = MachineConfig::load(&config_dir, &name)?;
            // nspawn's settings file, under wharf's own (machine(1), "Settings of
            // systemd-nspawn": the first found, and only /etc and /run trusted).
            let config = match super::nspawn_settings::load(&nspawn_dirs, image.parent(), &name)? {
                None => config,
                Some((path, nspawn)) => {
                    if !nspawn.ignored.is_empty() {
                        tracing::warn!(
                            machine = name,
                            file = %path.display(),
                            ignored = nspawn.ignored.join(", "),
                            "the settings file is not in a trusted place; its privileged keys are ignored"
                        );
                    }
                    config.over_nspawn(nspawn)
                }
            };
            // What can be told in one line here rather than as a failed
            // start: a missing source, a mount point leading out of the image.
            for bind in config.binds.iter().chain(&request_binds) {
                if std::fs::symlink_metadata(&bind.source).is_err() {
                    return Err(Error::NoBindSource { machine: name, path: bind.source.clone() });
                }
                if kind == ImageKind::Directory {
                    super::files::check_mount_point(&image, &bind.destination)
                        .map_err(|source| Error::Bind { machine: name.clone(), source })?;
                }
            }
            Ok((image, kind, config))
        })
        .await?;
        // The strings of the request and the settings file, read once into
        // what the launcher is given.
        let invalid =
            |what: &'static str, value: &str| Error::Invalid { machine: machine.clone(), what, value: value.into() };
        let private_users = match request.private_users.or(config.private_users.clone()) {
            None => PrivateUsers::Pick,
            Some(value) => value.parse().map_err(|_| invalid("--private-users value (pick, no or a UID)", &value))?,
        };
        let private_users_ownership = match request.private_users_ownership.or(config.private_users_ownership.clone()) {
            None => Ownership::Auto,
            Some(value) => {
                value.parse().map_err(|_| invalid("--private-users-ownership value (auto, idmap or chown)", &value))?
            }
        };
        let spec = |e: super::network::SpecError| Error::Network { machine: machine.clone(), source: e };
        let network: Network = match request.network.or(config.network.clone()) {
            None => Network::Host,
            Some(value) => value.parse().map_err(spec)?,
        };
        // Ports given at start replace the settings file's.
        let ports = match request.ports {
            Some(list) => super::network::parse_ports(&list).map_err(spec)?,
            None => config.ports.clone(),
        };
        {
            let (name, network, ports) = (machine.clone(), network.clone(), ports.clone());
            zruntime::unblock(move || super::network::host::precheck(&name, &network, &ports))
                .await
                .map_err(|source| Error::NetworkSetup { machine: machine.clone(), source })?;
        }
        let limits = config.merged_limits(&request.properties);
        let capabilities = |what, list: Option<String>| match list {
            None => Ok(rustix::thread::CapabilitySet::empty()),
            Some(list) => capability::parse(&list).map_err(|_| invalid(what, &list)),
        };
        let capability = capabilities("--capability value", request.capability.or(config.capability.clone()))?;
        let drop_capability =
            capabilities("--drop-capability value", request.drop_capability.or(config.drop_capability.clone()))?;
        let no_new_privileges = request.no_new_privileges.or(config.no_new_privileges).unwrap_or(false);
        let binds: Vec<BindSpec> = config.binds.iter().cloned().chain(request.binds).collect();

        let (directory, image_file) =
            if kind == ImageKind::Directory { (Some(image.clone()), None) } else { (None, Some(image.clone())) };
        let launch = LaunchArgs {
            machine: machine.clone(),
            directory,
            image: image_file,
            private_users,
            private_users_ownership,
            network,
            ports,
            capability,
            drop_capability,
            no_new_privileges,
            binds,
            environment: config.environment.iter().cloned().chain(request.environment).collect(),
        };
        let argv =
            launch.command_line(LAUNCHER).map_err(|e| invalid("path (not UTF-8)", &e.0.display().to_string()))?;
        let unit = unit_name(&machine);
        let mut properties: Vec<(String, OwnedVariant)> = vec![
            (
                "Description".into(),
                OwnedVariant::try_from(zbus::Variant::from(format!("wharf machine {machine}"))).expect("a string"),
            ),
            ("Slice".into(), crate::systemd::text("machine.slice")),
            ("Delegate".into(), OwnedVariant::from(true)),
            ("Type".into(), crate::systemd::text("notify")),
            // SIGTERM to the launcher only, which halts the container cleanly.
            ("KillMode".into(), crate::systemd::text("mixed")),
            ("CollectMode".into(), crate::systemd::text("inactive-or-failed")),
            // Readiness is waited for here, with our timeout; the unit itself waits as long as it takes.
            ("TimeoutStartUSec".into(), OwnedVariant::from(u64::MAX)),
            ("RestartForceExitStatus".into(), exit_statuses(&[EXIT_REBOOT.into()])),
            ("SuccessExitStatus".into(), exit_statuses(&[EXIT_REBOOT.into()])),
            ("ExecStart".into(), crate::systemd::exec_start(&argv)),
        ];
        if launch.network.has_link() {
            // Whatever ends the launcher (a crash, SIGKILL, a failed start),
            // the links, bridge and nftables rules it made go with the unit.
            let cleanup = vec![LAUNCHER.to_string(), "network-cleanup".into(), format!("--machine={machine}")];
            properties.push(("ExecStopPost".into(), crate::systemd::exec_start(&cleanup)));
        }
        properties.extend(device_properties(kind != ImageKind::Directory));
        properties.extend(limits.iter().map(Property::to_bus));
        // Held until the machine is ready (or its wait is over): boots
        // beyond the bound wait here, before their unit exists.
        let _slot = boot_slot().await?;
        tracing::info!(machine, image = %image.display(), limits = limits.len(), "starting");
        match systemd.start_transient(&unit, properties, request.ready_timeout).await {
            Ok(outcome) => Ok(Started { unit, ready: outcome == JobOutcome::Done }),
            Err(crate::systemd::Error::JobFailed { result, .. }) => {
                Err(Error::StartFailed { machine, unit, reason: format!("its start job {result}") })
            }
            Err(source) => Err(Error::Systemd { machine, source }),
        }
    }
}

/// The slots of machines that may boot at once (`[machines]
/// max-parallel-starts` of wharf.toml), read once per wharfd: every start
/// takes one, whoever asks (`machine start`, a fleet apply, the boot units
/// machines.target pulls in, a recovery).
static BOOT_SLOTS: std::sync::OnceLock<std::result::Result<zruntime::lock::Semaphore, String>> =
    std::sync::OnceLock::new();

async fn boot_slot() -> Result<zruntime::lock::SemaphoreGuard<'static>> {
    let slots = BOOT_SLOTS.get_or_init(|| {
        let bound = super::settings::parallel_starts()?;
        tracing::debug!(bound, "machines booting at once");
        Ok(zruntime::lock::Semaphore::new(bound))
    });
    match slots {
        Ok(slots) => Ok(slots.acquire().await),
        Err(e) => Err(Error::Settings(e.clone())),
    }
}

impl Machines {
    /// `poweroff` (SIGRTMIN+4), `reboot` (SIGINT) or `halt` (SIGRTMIN+3) to
    /// the container's init; with `wait`, until its unit is gone.
    pub async fn signal_init(
        &self,
        systemd: &Systemd,
        machined: &Machined<'_>,
        machine: &str,
        signal: i32,
        wait: Option<Duration>,
    ) -> Result<()> {
        validate(machine)?;
        if !is_running(machined, machine).await? {
            return Err(Error::NotRunning(machine.to_string()));
        }
        machined
            .kill_machine(machine.to_string(), "leader".into(), signal)
            .await
            .map_err(|source| Error::Machined { machine: machine.to_string(), source })?;
        if let Some(timeout) = wait {
            wait_gone(systemd, machine, timeout).await?;
        }
        Ok(())
    }

    /// After a crash of an apply that started or stopped machines: those it
    /// started are terminated, those it stopped are started again (their
    /// boot not waited for: wharfd takes no call until recovery is done).
    /// Each that cannot be put back is a failed step.
    pub async fn settle_recovery(
        &self,
        systemd: &Systemd,
        machined: &Machined<'_>,
        terminate: &[String],
        start: &[String],
    ) -> Vec<crate::transaction::FailedUndo> {
        let mut undo = crate::transaction::Undo::new("an interrupted change");
        for machine in terminate {
            match is_running(machined, machine).await {
                Ok(false) => {}
                Ok(true) => {
                    undo.step("terminating a machine it started", self.terminate(systemd, machined, machine).await)
                }
                Err(e) => undo.step("terminating a machine it started", Err::<(), _>(e)),
            }
        }
        for machine in start {
            match is_running(machined, machine).await {
                Ok(true) => {}
                Ok(false) => {
                    let request = StartRequest::with_settings(machine, Duration::ZERO);
                    undo.step("starting a machine it stopped", self.start(systemd, machined, request).await);
                }
                Err(e) => undo.step("starting a machine it stopped", Err::<(), _>(e)),
            }
        }
        undo.finish()
    }

    /// Stops the machine's unit: the launcher halts the container, then
    /// systemd removes whatever is left.
    pub async fn terminate(&self, systemd: &Systemd, machined: &Machined<'_>, machine: &str) -> Result<()> {
        validate(machine)?;
        if !is_running(machined, machine).await? {
            return Err(Error::NotRunning(machine.to_string()));
        }
        systemd
            .stop(&[unit_name(machine)], true)
            .await
            .map_err(|source| Error::Systemd { machine: machine.to_string(), source })
    }

    /// Sends a signal to the container's init (`leader`) or all its processes (`all`).
    pub async fn kill(&self, machined: &Machined<'_>, machine: &str, whom: &str, signal: i32) -> Result<()> {
        validate(machine)?;
        if whom != "leader" && whom != "all" {
            return Err(Error::Invalid {
                machine: machine.into(),
                what: "--kill-whom (leader or all)",
                value: whom.into(),
            });
        }
        machined
            .kill_machine(machine.to_string(), whom.to_string(), signal)
            .await
            .map_err(|source| Error::Machined { machine: machine.to_string(), source })
    }

    /// Changes limits of a running machine live; with `save`, also in its
    /// settings file, so that they apply at every start.
    pub async fn set_properties(
        &self,
        systemd: &Systemd,
        machined: &Machined<'_>,
        machine: &str,
        properties: &[Property],
        save: bool,
    ) -> Result<()> {
        validate(machine)?;
        match running_unit(machined, machine).await? {
            Some(running) => {
                if save && !running.is_wharfs() {
                    return Err(Error::NotOurs {
                        machine: machine.to_string(),
                        unit: running.unit,
                        what: "--save keeps limits for wharf's own starts only",
                    });
                }
                let bus: Vec<(String, OwnedVariant)> = properties.iter().map(Property::to_bus).collect();
                systemd
                    .set_properties(&running.unit, true, bus)
                    .await
                    .map_err(|source| Error::Systemd { machine: machine.to_string(), source })?;
            }
            None if !save => return Err(Error::NotRunning(machine.to_string())),
            None => {}
        }
        if save {
            let (dir, name, properties) = (self.config_dir.clone(), machine.to_string(), properties.to_vec());
            zruntime::unblock(move || save_limits(&dir, &name, &properties)).await?;
        }
        Ok(())
    }

    /// The limits of a running machine, as its unit has them.
    pub async fn limits(
        &self,
        systemd: &Systemd,
        machined: &Machined<'_>,
        machine: &str,
    ) -> Result<Vec<(String, String)>> {
        validate(machine)?;
        let Some(running) = running_unit(machined, machine).await? else {
            return Err(Error::NotRunning(machine.to_string()));
        };
        let unit = running.unit;
        // nspawn's machines run in a service (systemd-nspawn@NAME) or in a
        // scope machined made; both carry the cgroup limits.
        let interface = if unit.ends_with(".scope") {
            "org.freedesktop.systemd1.Scope"
        } else {
            "org.freedesktop.systemd1.Service"
        };
        let mut limits = Vec::new();
        for limit in LIMITS {
            let value = systemd
                .unit_property(&unit, interface, limit.bus_property())
                .await
                .map_err(|source| Error::Systemd { machine: machine.to_string(), source })?;
            limits.push((limit.name().to_string(), show_value(*limit, &value)));
        }
        Ok(limits)
    }

    /// Starts the machine at boot (through its unit wanted by machines.target), or not.
    pub async fn set_enabled(&self, systemd: &Systemd, machine: &str, enabled: bool) -> Result<()> {
        validate(machine)?;
        let units = [boot_unit(machine)];
        let result = if enabled { systemd.enable(&units, false).await } else { systemd.disable(&units, false).await };
        result.map_err(|source| Error::Systemd { machine: machine.to_string(), source })?;
        systemd.reload().await.map_err(|source| Error::Systemd { machine: machine.to_string(), source })
    }
}

/// The devices a machine's unit may open (`DevicePolicy=closed` adds
/// nothing else): the nodes of the launcher's /dev (null, zero, full,
/// random, urandom, tty), ptys (the console is a host pty; the container's
/// devpts instance has its own ptmx, 5:2 like the host's), and for an image
/// file the loop devices the launcher attaches it with. Never `m`: nothing
/// in a machine creates device nodes. nspawn's unit also allows
/// /dev/net/tun, /dev/fuse and device-mapper; the launcher gives the
/// container none of those nodes (see machine(1)).
fn device_allow_list(image_file: bool) -> Vec<(&'static str, &'static str)> {
    let mut list = vec![
        ("/dev/null", "rw"),
        ("/dev/zero", "rw"),
        ("/dev/full", "rw"),
        ("/dev/random", "rw"),
        ("/dev/urandom", "rw"),
        ("/dev/tty", "rw"),
        ("/dev/ptmx", "rw"),
        ("char-pts", "rw"),
    ];
    if image_file {
        list.extend([("/dev/loop-control", "rw"), ("block-loop", "rw")]);
    }
    list
}

/// `DevicePolicy=closed` and the `DeviceAllow` list (a(ss)) of a unit
/// whose processes are in a machine: the machine's own, and the units of
/// `machine shell`, whose main process (`wharfd enter`, which stays outside
/// the machine's cgroup while the command runs below it) would otherwise
/// open any device the container's /dev or a mount of its root holds.
/// `image_file`: the launcher attaches a loop device.
pub fn device_properties(image_file: bool) -> Vec<(String, OwnedVariant)> {
    let entries: Vec<(String, String)> =
        device_allow_list(image_file).iter().map(|(d, a)| (d.to_string(), a.to_string())).collect();
    vec![
        ("DevicePolicy".into(), crate::systemd::text("closed")),
        (
            "DeviceAllow".into(),
            OwnedVariant::try_from(zbus::Variant::from(entries)).expect("strings hold no descriptor"),
        ),
    ]
}

/// `RestartForceExitStatus`/`SuccessExitStatus`: (exit codes, signals).
pub(crate) fn exit_statuses(codes: &[i32]) -> OwnedVariant {
    OwnedVariant::try_from(zbus::Variant::from((codes.to_vec(), Vec::<i32>::new())))
        .expect("numbers hold no descriptor")
}

/// Refuses, before any unit exists, an image that cannot boot as it is: a
/// GPT disk whose partition for this architecture is a /usr one (there is
/// no root file system), one that `policy` does not allow, and one whose
/// root partition does not match its verity data (each block is checked
/// against the hash tree and the tree against the root hash; the launcher
/// checks again through the descriptor it boots from).
fn check_image(machine: &str, image: &Path, kind: ImageKind, policy: Option<&str>) -> Result<()> {
    use crate::image::policy::ImagePolicy;
    let policy = policy
        .map(|text| ImagePolicy::parse(text).map_err(|source| Error::ImagePolicy { machine: machine.into(), source }))
        .transpose()?;
    let refused = |why: String| Error::ImagePolicyRefuses {
        machine: machine.into(),
        policy: policy.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default(),
        why,
    };
    match kind {
        ImageKind::Gpt => {}
        ImageKind::Directory if policy.is_some() => {
            return Err(Error::ImagePolicyOnDirectory { machine: machine.into() });
        }
        _ => {
            if let Some(why) = policy.as_ref().and_then(|p| p.refuses("root", "unprotected", Some(kind.as_str()))) {
                return Err(refused(why));
            }
            return Ok(());
        }
    }
    let file = std::fs::File::open(image).map_err(|source| Error::Io { path: image.to_path_buf(), source })?;
    let file = std::sync::Arc::new(file);
    let layout = crate::image::gpt::layout(image, &file)?;
    if !layout.has_root() {
        return Err(Error::NoRootPartition {
            machine: machine.to_string(),
            architecture: crate::image::gpt::host_architecture(),
        });
    }
    if let Some(policy) = &policy {
        // The partitions of other architectures are not this machine's.
        let roles: Vec<&str> = layout
            .partitions
            .iter()
            .filter(|p| p.architecture.as_deref().is_none_or(|a| a == crate::image::gpt::host_architecture()))
            .map(|p| p.role.as_str())
            .collect();
        // The launcher checks the data against the root hash; nothing
        // checks a signature of it, so a signed root counts as verity.
        if let Some(why) = policy.refuses_partitions(&roles, false) {
            return Err(refused(why));
        }
    }
    if let Some(protected) = crate::image::verity::find(image, &file, &layout, None)? {
        crate::image::verity::verify(image, &file, &protected)?;
    }
    Ok(())
}

/// Refuses an image with nothing to run as PID 1, before any unit exists.
fn check_init(machine: &str, image: &Path, kind: ImageKind) -> Result<()> {
    let file = std::fs::File::open(image).map_err(|source| Error::Io { path: image.to_path_buf(), source })?;
    let mut opened = open(image, file, kind)?;
    // The image readers do not show modes: the launcher checks that it is executable.
    match super::init::find(opened.tree.as_mut(), |_| Ok(true)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) | Err(_) => Err(Error::NoInit { machine: machine.to_string() }),
    }
}

/// Whether machined knows a machine of this name.
pub async fn is_running(machined: &Machined<'_>, machine: &str) -> Result<bool> {
    let running =
        running_machines(machined).await.map_err(|source| Error::Machined { machine: machine.to_string(), source })?;
    Ok(running.contains(machine))
}

/// A machine machined knows: the unit it runs in, and who registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningMachine {
    pub unit: String,
    pub service: String,
}

impl RunningMachine {
    /// Started by `machine start` (its launcher registered it).
    pub fn is_wharfs(&self) -> bool {
        self.service == "wharf"
    }
}

/// The machine of this name that machined knows, if any.
pub async fn running_unit(machined: &Machined<'_>, machine: &str) -> Result<Option<RunningMachine>> {
    let failed = |source| Error::Machined { machine: machine.to_string(), source };
    let listed = machined.list_machines().await.map_err(failed)?;
    if !listed.iter().any(|(name, ..)| name == machine) {
        return Ok(None);
    }
    let path = match machined.get_machine(machine.to_string()).await {
        Ok(path) => path,
        // Gone between the two calls.
        Err(_) => return Ok(None),
    };
    let proxy = zbus_systemd::machine1::MachineProxy::builder(machined.inner().connection())
        .path(path)
        .build()
        .await
        .map_err(failed)?;
    Ok(Some(RunningMachine {
        unit: proxy.unit().await.map_err(failed)?,
        service: proxy.service().await.unwrap_or_default(),
    }))
}

/// The names of the machines machined knows, in one call.
pub async fn running_machines(machined: &Machined<'_>) -> zbus::Result<std::collections::HashSet<String>> {
    Ok(machined.list_machines().await?.into_iter().map(|(name, ..)| name).collect())
}

/// Waits until the machine's unit is gone (stopped and collected, or inactive).
async fn wait_gone(systemd: &Systemd, machine: &str, timeout: Duration) -> Result<()> {
    let unit = unit_name(machine);
    match systemd.wait_for(std::slice::from_ref(&unit), crate::systemd::condition::stopped, "stopped", timeout).await {
        Ok(()) => Ok(()),
        Err(crate::systemd::Error::WaitTimeout { .. }) => Err(Error::StopTimeout(machine.to_string(), timeout)),
        Err(source) => Err(Error::Systemd { machine: machine.to_string(), source }),
    }
}

/// A limit's value read from the unit, as `systemctl show` writes it.
fn show_value(limit: Limit, value: &OwnedVariant) -> String {
    if let Ok(number) = u64::try_from(value.clone()) {
        return format_value(limit, &Value::Number(number));
    }
    if let Ok(mask) = Vec::<u8>::try_from(value.clone()) {
        return if mask.is_empty() { String::new() } else { format_value(limit, &Value::CpuMask(mask)) };
    }
    String::new()
}

/// Writes limits into the machine's settings file, keeping what else it says.
fn save_limits(dir: &Path, machine: &str, properties: &[Property]) -> Result<()> {
    let (path, text) = settings_with_limits(dir, machine, properties, false)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    crate::fs::write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| Error::Io { path, source })
}

/// The machine's settings file with these limits (added to the ones it has,
/// or, with `replace`, instead of them), keeping what else it says: its
/// path and new text.
pub fn settings_with_limits(
    dir: &Path,
    machine: &str,
    properties: &[Property],
    replace: bool,
) -> Result<(PathBuf, String)> {
    let path = dir.join(format!("{machine}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(Error::Io { path, source }),
    };
    // Parse first, so a broken file is reported rather than overwritten.
    MachineConfig::parse(&text, &path)?;
    let mut document: toml::Table = toml::from_str(&text).map_err(|e| Error::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    if replace {
        document.remove("limits");
    }
    let limits = document.entry("limits").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(limits) = limits {
        for property in properties {
            limits.insert(
                property.limit.name().to_string(),
                toml::Value::String(format_value(property.limit, &property.value)),
            );
        }
    }
    let rendered =
        toml::to_string(&document).map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
    Ok((path, rendered))
}

/// Settings text (from [`settings_with_limits`]) with `network` and
/// `port` of `[container]` set to these, where given.
pub fn with_network(
    path: &Path,
    text: &str,
    network: Option<&str>,
    ports: Option<&[super::network::Port]>,
) -> Result<String> {
    let invalid = |e: String| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    };
    let mut document: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let container = document.entry("container").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(container) = container {
        if let Some(network) = network {
            container.insert("network".into(), toml::Value::String(network.to_string()));
        }
        match ports {
            Some([]) => {
                container.remove("port");
            }
            Some(ports) => {
                let list = ports.iter().map(|p| toml::Value::String(p.to_string())).collect();
                container.insert("port".into(), toml::Value::Array(list));
            }
            None => {}
        }
        if container.is_empty() {
            document.remove("container");
        }
    }
    let rendered = toml::to_string(&document).map_err(|e| invalid(e.to_string()))?;
    MachineConfig::parse(&rendered, path)?;
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_network_settings_go_into_the_container_table() {
        let path = Path::new("/etc/wharf/machines/f28.toml");
        let ports = ["tcp:8080:80".parse().unwrap()];
        let text = with_network(path, "[limits]\nTasksMax = \"100\"\n", Some("zone:lab"), Some(&ports)).unwrap();
        let config = MachineConfig::parse(&text, path).unwrap();
        assert_eq!(config.network.as_deref(), Some("zone:lab"));
        assert_eq!(config.ports, ports);
        assert_eq!(config.limits.len(), 1);
        let kept = with_network(path, &text, None, Some(&[])).unwrap();
        let config = MachineConfig::parse(&kept, path).unwrap();
        assert_eq!((config.network.as_deref(), config.ports.len()), (Some("zone:lab"), 0));
    }

    #[test]
    fn saved_limits_merge_into_the_settings_file() {
        let dir = std::env::temp_dir().join(format!("wharf-machine-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f28.toml"), "[container]\nnetwork = \"private\"\n\n[limits]\nTasksMax = 100\n")
            .unwrap();
        let properties = [Property::parse("MemoryMax=512M").unwrap(), Property::parse("CPUQuota=50%").unwrap()];
        save_limits(&dir, "f28", &properties).unwrap();
        let config = MachineConfig::load(&dir, "f28").unwrap();
        assert_eq!(config.network.as_deref(), Some("private"));
        let words: Vec<String> = config.limits.iter().map(|p| p.to_string()).collect();
        assert_eq!(words, ["CPUQuota=50%", "MemoryMax=536870912", "TasksMax=100"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_device_allow_list_is_closed() {
        let directory = device_allow_list(false);
        assert!(directory.contains(&("char-pts", "rw")) && directory.contains(&("/dev/ptmx", "rw")));
        assert!(directory.iter().all(|(_, access)| !access.contains('m')));
        assert!(!directory.iter().any(|(device, _)| device.contains("loop")));
        let raw = device_allow_list(true);
        assert!(raw.contains(&("block-loop", "rw")) && raw.contains(&("/dev/loop-control", "rw")));
    }

    #[test]
    fn units_are_named_after_the_machine() {
        assert_eq!(unit_name("f28"), "wharf-f28.service");
        assert_eq!(boot_unit("f28"), "wharf-machine@f28.service");
    }
}
