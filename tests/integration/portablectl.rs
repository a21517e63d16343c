//! portablectl's own command lines, run unchanged against portablectl and
//! against wharf's `portable`, on the same images in one testbed: each must
//! end with the same exit status and leave the host in the same state (the
//! units systemd sees, how they run, and the images in the pool). Where
//! wharf differs on purpose, the case says so and the difference is
//! asserted, as portable(1) documents it.

use std::sync::Arc;

use libtest_mimic::Trial;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![exclusive_trial(shared, "portablectl::command_lines_run_unchanged_with_the_same_result", command_lines)]
}

/// Where the pristine images are kept between cases.
const PRISTINE: &str = "/srv/pctl";

/// The units the images bring, whose state is compared.
const UNITS: &[&str] = &["foobar.service", "foobar-hello.service"];

/// One command line: `setup` runs first with the same tool, then `args`.
struct Case {
    setup: &'static [&'static str],
    args: &'static str,
    /// What differs on purpose, if anything: `None` means exit status and
    /// host state must be equal.
    differs: Option<Difference>,
}

/// The differences portable(1) documents.
#[derive(Clone, Copy, Debug)]
enum Difference {
    /// portablectl 252's `is-attached` exits 0 for a detached image; wharf 1.
    IsAttachedStatus,
    /// wharf takes what this portablectl refuses (an image's file name with
    /// its `.raw`, an option of a later systemd, a directory marked
    /// read-only): it must succeed, and where the reference succeeds too,
    /// end the same.
    Superset,
    /// wharf refuses on purpose what portablectl 252 does (attaching
    /// without a sandbox when the profile is unknown, removing an image
    /// marked read-only): it must fail and change nothing.
    Refuses,
    /// An attach of what is attached already, exactly so: a no-op that
    /// says so and succeeds, where portablectl refuses.
    AttachedAlready,
    /// `detach IMAGE PREFIX` detaches only the units the prefix matches;
    /// portablectl 252 detaches them all.
    DetachByPrefix,
    /// `--copy=auto` links the units of a directory image, as portablectl(1)
    /// documents ("symlink where possible"); portablectl copies them.
    AutoLinksDirectories,
    /// A detach removes the unit's enablement links with it; portablectl
    /// leaves them dangling.
    NoDanglingLinks,
    /// wharf's trusted profile runs the service; portablectl 257's fails to
    /// in this container.
    TrustedRuns,
}

impl Difference {
    /// Whether the two outcomes differ as this difference says they do.
    fn check(self, reference: &Outcome, ours: &Outcome) -> Result<(), String> {
        let holds = match self {
            Difference::IsAttachedStatus | Difference::AttachedAlready => {
                ours.code == i32::from(matches!(self, Difference::IsAttachedStatus)) && ours.state == reference.state
            }
            Difference::Superset => ours.code == 0 && (reference.code != 0 || ours.state == reference.state),
            Difference::Refuses => ours.code == 1 && ours.state == ours.before,
            Difference::AutoLinksDirectories => {
                ours.code == reference.code && ours.state == reference.state.replace(" file ", " link ")
            }
            Difference::NoDanglingLinks => {
                ours.code == reference.code && ours.state == reference.state.replace(" enabled ", " not-enabled ")
            }
            Difference::TrustedRuns => ours.code == 0 && ours.state.contains("foobar.service: loaded active"),
            Difference::DetachByPrefix => {
                ours.code == 0
                    && ours.state.contains("foobar-hello.service: not-found")
                    && ours.state.contains("foobar.service: loaded")
            }
        };
        if holds { Ok(()) } else { Err(format!("not the documented difference {self:?}")) }
    }
}

const fn same(setup: &'static [&'static str], args: &'static str) -> Case {
    Case { setup, args, differs: None }
}

const fn differs(setup: &'static [&'static str], args: &'static str, difference: Difference) -> Case {
    Case { setup, args, differs: Some(difference) }
}

const CASES: &[Case] = &[
    same(&[], "attach foobar_1"),
    same(&[], "attach --cat foobar_1"),
    differs(&[], "attach foobar_1.raw", Difference::Superset),
    same(&[], "attach /var/lib/portables/foobar_1.raw"),
    same(&[], "attach foobar_1 foobar"),
    same(&[], "attach foobar_1 foobar-hello"),
    same(&[], "attach --now foobar_1"),
    same(&[], "attach --now --no-block foobar_1"),
    same(&[], "attach --enable foobar_1"),
    same(&[], "attach --enable --now foobar_1"),
    same(&[], "attach --runtime foobar_1"),
    same(&[], "attach --runtime --now foobar_1"),
    same(&[], "attach --no-reload foobar_1"),
    same(&[], "attach --profile=strict foobar_1"),
    differs(&[], "attach -p trusted --now foobar_1", Difference::TrustedRuns),
    same(&[], "attach --copy=copy foobar_1"),
    same(&[], "attach --copy=symlink foobar_d"),
    differs(&[], "attach --copy=mixed foobar_d", Difference::Superset),
    differs(&[], "attach --copy=auto --now foobar_d", Difference::AutoLinksDirectories),
    same(&[], "attach --copy=symlink foobar_1"),
    differs(&[], "attach --profile=nosuchprofile foobar_1", Difference::Refuses),
    same(&[], "attach nosuchimage"),
    differs(&["attach foobar_1"], "attach foobar_1", Difference::AttachedAlready),
    same(&["attach foobar_1"], "detach foobar_1"),
    same(&["attach foobar_1"], "detach foobar_1.raw"),
    differs(&["attach foobar_1"], "detach foobar_1 foobar-hello", Difference::DetachByPrefix),
    same(&["attach --now foobar_1"], "detach foobar_1"),
    same(&["attach --now foobar_1"], "detach --now foobar_1"),
    differs(&["attach --enable --now foobar_1"], "detach --now foobar_1", Difference::NoDanglingLinks),
    same(&["attach --runtime foobar_1"], "detach --runtime foobar_1"),
    same(&["attach foobar_1"], "detach --no-reload foobar_1"),
    same(&[], "detach foobar_1"),
    // --clean came with systemd 256: later than bookworm's portablectl.
    differs(&["attach --now foobar_1"], "detach --now --clean foobar_1", Difference::Superset),
    same(&["attach --now foobar_1"], "reattach foobar_2"),
    same(&["attach --now foobar_1"], "reattach --now foobar_2"),
    same(&["attach foobar_1"], "reattach foobar_2"),
    same(&["attach --enable --now foobar_1"], "reattach --enable --now foobar_2"),
    same(&[], "list"),
    same(&[], "list --no-legend"),
    same(&[], "--no-pager list"),
    same(&[], "-q list"),
    same(&[], "inspect foobar_1"),
    same(&[], "inspect --cat foobar_1"),
    same(&[], "inspect foobar_1 foobar-hello"),
    same(&[], "inspect nosuchimage"),
    same(&["attach --now foobar_1"], "is-attached foobar_1"),
    same(&["attach foobar_1"], "is-attached foobar_1.raw"),
    differs(&[], "is-attached foobar_1", Difference::IsAttachedStatus),
    same(&[], "read-only foobar_1"),
    same(&[], "read-only foobar_1 yes"),
    same(&["read-only foobar_1"], "read-only foobar_1 no"),
    differs(&[], "read-only foobar_d yes", Difference::Superset),
    same(&[], "remove foobar_2"),
    same(&[], "remove foobar_2 foobar_d"),
    same(&["attach foobar_1"], "remove foobar_1"),
    differs(&["read-only foobar_2"], "remove foobar_2", Difference::Refuses),
    same(&[], "remove nosuchimage"),
    same(&[], "set-limit 1G"),
    same(&[], "set-limit foobar_1 1G"),
];

fn command_lines(tb: &Testbed) {
    for (name, format, version) in [("foobar_1.raw", "squashfs", "1"), ("foobar_2.raw", "squashfs", "2")] {
        images::foobar(&tb.host_path(&format!("{PRISTINE}/{name}")), format, version).unwrap();
    }
    images::foobar(&tb.host_path(&format!("{PRISTINE}/foobar_d")), "dir", "3").unwrap();
    let mut differences = Vec::new();
    for case in CASES {
        let reference = run_case(tb, "portablectl", case);
        let ours = run_case(tb, "portable", case);
        let what = format!("'{}' (after '{}')", case.args, case.setup.join("; "));
        let verdict = match case.differs {
            None if (reference.code, &reference.state) != (ours.code, &ours.state) => Err("they differ".to_string()),
            None => Ok(()),
            Some(difference) => difference.check(&reference, &ours),
        };
        if let Err(why) = verdict {
            differences.push(format!(
                "{what}: {why}\n  portablectl: {}\n  portable:    {}",
                reference.describe(),
                ours.describe()
            ));
        }
    }
    reset(tb);
    tb.ok(&format!("rm -rf {PRISTINE}"));
    assert!(differences.is_empty(), "{} command lines differ:\n{}", differences.len(), differences.join("\n"));
}

/// What a command line left: its exit status and the host's state (what
/// it said is kept for the message, not compared).
#[derive(Debug)]
struct Outcome {
    code: i32,
    /// The host's state after the setup, before the command line.
    before: String,
    state: String,
    output: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!("exit {}, {}; said: {}", self.code, self.state, self.output.trim().replace('\n', " | "))
    }
}

fn run_case(tb: &Testbed, tool: &str, case: &Case) -> Outcome {
    reset(tb);
    for setup in case.setup {
        tb.ok(&format!("{tool} {setup}"));
    }
    let before = host_state(tb);
    let out = tb.sh(&format!("{tool} {}", case.args));
    let state = host_state(tb);
    Outcome { code: out.code.unwrap_or(-1), before, state, output: format!("{}{}", out.stdout, out.stderr) }
}

/// Back to a host where nothing of foobar is attached or running and the
/// pool holds the pristine images.
fn reset(tb: &Testbed) {
    tb.ok(&format!(
        "systemctl stop 'foobar*' 2>/dev/null; systemctl disable foobar.service foobar-hello.service 2>/dev/null; \
         rm -rf /etc/systemd/system/foobar* /run/systemd/system/foobar* /etc/systemd/system/*.wants/foobar* \
           /etc/systemd/system.attached/foobar* /run/systemd/system.attached/foobar* \
           /etc/systemd/system.attached/*.wants/foobar* /run/systemd/system.attached/*.wants/foobar* \
           /run/systemd/system/*.wants/foobar* /etc/portables/foobar* /run/portables/foobar*; \
         for i in /var/lib/portables/*; do portable read-only \"$i\" no >/dev/null 2>&1; done; \
         rm -rf /var/lib/portables/*; cp -a {PRISTINE}/. /var/lib/portables/; \
         systemctl daemon-reload; systemctl reset-failed; true"
    ));
}

/// The host as a tool-neutral text: for each unit, whether systemd has it,
/// how it runs and from which image, whether it is enabled and whether it
/// is persistent (/etc) or runtime (/run); then each image in the pool
/// and whether it is writable.
fn host_state(tb: &Testbed) -> String {
    // Settled first: with --no-block a start may still be under way.
    let settled = tb
        .sh("for i in $(seq 300); do [ -z \"$(systemctl list-jobs --no-legend)\" ] && exit 0; sleep 0.1; done; exit 1");
    assert!(settled.success(), "systemd's jobs never finished: {settled}");
    let mut state = Vec::new();
    for unit in UNITS {
        let props = tb.ok(&format!(
            "systemctl show -p LoadState -p ActiveState -p RootImage -p RootDirectory -p FragmentPath {unit}"
        ));
        let get =
            |key: &str| props.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string();
        let fragment = get("FragmentPath");
        let place = match &fragment {
            p if p.starts_with("/etc/") => "persistent",
            p if p.starts_with("/run/") => "runtime",
            p if p.is_empty() => "none",
            _ => "elsewhere",
        };
        // Whether it is linked into the image, and enabled (a .wants link
        // anywhere systemd looks): portablectl's live in system.attached/,
        // which systemctl's UnitFileState does not count.
        let linked =
            if !fragment.is_empty() && tb.sh(&format!("test -L {fragment}")).success() { "link" } else { "file" };
        let enabled = tb.ok(&format!(
            "ls /etc/systemd/system*/*.wants/{unit} /run/systemd/system*/*.wants/{unit} 2>/dev/null | wc -l"
        ));
        let enabled = if enabled.trim() == "0" { "not-enabled" } else { "enabled" };
        state.push(format!(
            "{unit}: {} {} {place} {linked} {enabled} {}{}",
            get("LoadState"),
            get("ActiveState"),
            get("RootImage"),
            get("RootDirectory")
        ));
    }
    // Each image of the pool, and whether it is marked read-only (as wharf
    // reads it: the immutable flag of a directory, a file's mode).
    let listed: serde_json::Value = serde_json::from_str(&tb.ok("portable --json list")).unwrap();
    let mut images: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|image| {
            let name = image["path"].as_str()?.strip_prefix("/var/lib/portables/")?;
            Some(format!("{name} read-only={}", image["read_only"]))
        })
        .collect();
    images.sort();
    state.extend(images);
    state.join("; ").replace('\n', ", ")
}
