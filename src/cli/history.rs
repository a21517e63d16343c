//! `portable history` and `machine history`: the audit trail wharfd
//! writes to the journal, read in this process with the caller's own right
//! to read the system journal (see [`crate::audit::history`]).

use clap::Args;

use super::CliError;
use super::output::Format;
use crate::audit::Domain;
use crate::audit::history::{self, Query};

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only entries about this image or machine (a name or a path).
    pub name: Option<String>,
    /// Only entries at or after this time, in journalctl's syntax ("2026-12-01 10:00", "-1h", "today").
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only entries at or before this time, in journalctl's syntax.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only changes asked for by this user (a name or a uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

/// Prints the entries of `domain` (with the fleet applies), oldest first.
pub fn run(args: HistoryArgs, domain: Domain, format: Format) -> Result<(), CliError> {
    let query =
        Query { domain: Some(domain), subject: args.name, since: args.since, until: args.until, user: args.user };
    let entries = history::read(&query).map_err(|e| CliError::Usage(e.to_string()))?;
    format.emit(&entries, |entries| history::text(entries))
}
