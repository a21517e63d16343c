//! wharf's own settings for machines, in `[machines]` of
//! `/etc/wharf/wharf.toml` (beside `[network]`, see `network`):
//!
//! ```toml
//! [machines]
//! max-parallel-starts = 4   # machines booting at once; default: the CPUs
//! ```
//!
//! Boots beyond the bound wait for a slot: a host that starts 50 machines
//! at once (`machine start` of many, a fleet apply, machines.target at
//! boot) then does not starve each of them of CPU until their readiness
//! deadlines pass (systemd issues #6232, #37295).

use serde::Deserialize;

pub use super::network::SETTINGS_FILE;

/// The most boots ever allowed at once, whatever the file says: far more
/// than any host boots at once, and a typo (`40000`) stays harmless.
pub const MAX_PARALLEL_STARTS: usize = 1024;

#[derive(Debug, Default, Deserialize)]
struct Layout {
    #[serde(default)]
    machines: Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Section {
    max_parallel_starts: Option<i64>,
}

/// How many machines may boot at once: `max-parallel-starts` of the
/// settings text, else `cpus`. The error names the key and says why.
pub fn parse_parallel_starts(text: &str, cpus: usize) -> Result<usize, String> {
    let layout: Layout = toml::from_str(text).map_err(|e| format!("[machines]: {}", e.message()))?;
    match layout.machines.max_parallel_starts {
        None => Ok(cpus.max(1)),
        Some(n) if (1..=MAX_PARALLEL_STARTS as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(format!("max-parallel-starts: {n} is not a number from 1 to {MAX_PARALLEL_STARTS}")),
    }
}

/// The bound as the settings file on this host says (no file: the CPUs).
pub fn parallel_starts() -> Result<usize, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match std::fs::read_to_string(SETTINGS_FILE) {
        Ok(text) => parse_parallel_starts(&text, cpus).map_err(|e| format!("{SETTINGS_FILE}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(cpus.max(1)),
        Err(e) => Err(format!("{SETTINGS_FILE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_defaults_to_the_cpus() {
        assert_eq!(parse_parallel_starts("", 6), Ok(6));
        assert_eq!(parse_parallel_starts("[network]\npool = \"10.1.0.0/16\"\n", 2), Ok(2));
        assert_eq!(parse_parallel_starts("[machines]\n", 0), Ok(1));
    }

    #[test]
    fn the_bound_is_read_and_checked() {
        assert_eq!(parse_parallel_starts("[machines]\nmax-parallel-starts = 3\n", 8), Ok(3));
        for bad in ["0", "-1", "100000"] {
            let error = parse_parallel_starts(&format!("[machines]\nmax-parallel-starts = {bad}\n"), 8).unwrap_err();
            assert_eq!(error, format!("max-parallel-starts: {bad} is not a number from 1 to 1024"));
        }
        assert!(
            parse_parallel_starts("[machines]\nmax-parallel-starts = \"4\"\n", 8).unwrap_err().contains("[machines]")
        );
        assert!(parse_parallel_starts("[machines]\nparallel = 4\n", 8).unwrap_err().contains("unknown field"));
    }

    /// `[machines]` does not upset the network's reading of the same file.
    #[test]
    fn the_network_pool_reads_past_the_machines_section() {
        let text = "[network]\npool = \"192.168.64.0/18\"\n\n[machines]\nmax-parallel-starts = 2\n";
        assert_eq!(super::super::network::parse_pool(text).unwrap().to_string(), "192.168.64.0/18");
    }
}
