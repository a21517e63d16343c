//! `apply`: the same verb in `portable` and `machine`, since a fleet file
//! describes the whole host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::output::Format;
use super::progress::{with_progress, within};
use super::{CliError, current_dir};
use crate::api::{FleetProxy, fleet_flags};
use crate::fleet::{Plan, Step};

/// Exit status of `apply --check` when the host differs from the file.
pub const EXIT_CHANGES_PENDING: u8 = 2;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The fleet file (see wharf-fleet(5)).
    pub file: PathBuf,
    /// Print the plan and change nothing; exit 0 if there is nothing to do,
    /// 2 if there is.
    #[arg(long)]
    pub check: bool,
    /// Also detach images attached by hand that the file does not list.
    #[arg(long)]
    pub prune: bool,
}

/// What `apply --json` prints.
#[derive(Debug, serde::Serialize)]
struct ApplyView<'a> {
    file: String,
    /// Whether the host differs (differed) from the file.
    changed: bool,
    /// Whether the plan was carried out.
    applied: bool,
    plan: PlanView<'a>,
}

/// The plan's steps with their fields, each with its line of text as the
/// plain output prints it: a tool showing the plan need not word it again.
#[derive(Debug)]
struct PlanView<'a>(&'a Plan);

impl serde::Serialize for PlanView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let steps = self
            .0
            .steps
            .iter()
            .map(|step| {
                let mut fields = serde_json::to_value(step).map_err(serde::ser::Error::custom)?;
                if let Some(object) = fields.as_object_mut() {
                    object.insert("text".to_string(), step.to_string().into());
                }
                Ok(fields)
            })
            .collect::<Result<Vec<serde_json::Value>, S::Error>>()?;
        let mut plan = serializer.serialize_struct("Plan", 1)?;
        plan.serialize_field("steps", &steps)?;
        plan.end()
    }
}

pub async fn apply(bus: &zbus::Connection, args: ApplyArgs, format: Format, quiet: bool) -> Result<ExitCode, CliError> {
    let file = current_dir()?.join(&args.file);
    let text = std::fs::read_to_string(&file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let flags = if args.check { fleet_flags::CHECK } else { 0 } | if args.prune { fleet_flags::PRUNE } else { 0 };
    let fleet = within(FleetProxy::new(bus)).await?;
    let show = !quiet && !format.is_json();
    let (applied, steps) = with_progress(bus, show, fleet.apply(&text, &file.display().to_string(), flags)).await?;
    // In the daemon's order, which is the order the steps run in.
    let steps = steps.into_iter().map(Step::try_from).collect::<Result<Vec<_>, _>>();
    let plan = Plan { steps: steps.map_err(|e| CliError::Output(std::io::Error::other(e)))? };
    let view =
        ApplyView { file: file.display().to_string(), changed: !plan.is_empty(), applied, plan: PlanView(&plan) };
    if !quiet || format.is_json() {
        format.emit(&view, |view| {
            let mut text = view.plan.0.to_string();
            if view.applied {
                text.push_str("Applied.");
            } else if view.changed {
                text.push_str("(check: nothing was changed)");
            }
            text
        })?;
    }
    Ok(if args.check && !plan.is_empty() { ExitCode::from(EXIT_CHANGES_PENDING) } else { ExitCode::SUCCESS })
}
