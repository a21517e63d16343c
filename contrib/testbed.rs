//! A testbed for a developer: boots one with the freshly built wharf, runs
//! each argument as a shell script inside (printing its output), then, with
//! `--wait`, prints how to enter it and waits for Enter before powering off.
//! `--copy HOST:INNER` copies a host file or directory in before the scripts.
//!
//!     cargo build --bins --example testbed
//!     target/debug/examples/testbed --copy /tmp/foobar.raw:/var/lib/portables/foobar.raw 'portable list' --wait

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::PathBuf;
use std::process::ExitCode;

use testbed::{BootOptions, Release, Testbed};

fn main() -> ExitCode {
    let mut wait = false;
    let mut scripts = Vec::new();
    let mut copies = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wait" => wait = true,
            "--copy" => copies.extend(args.next()),
            _ => scripts.push(arg),
        }
    }
    let exe = std::env::current_exe().expect("own path");
    let bin_dir: PathBuf = exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf();
    let release = match Release::from_env() {
        Ok(release) => release,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let tb = match Testbed::boot(&BootOptions { release, bin_dir, label: "dev".into() }) {
        Ok(tb) => tb,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for copy in &copies {
        let Some((from, to)) = copy.split_once(':') else {
            eprintln!("--copy takes HOST:INNER, not {copy}");
            return ExitCode::FAILURE;
        };
        let target = tb.host_path(to);
        let _ = std::fs::create_dir_all(target.parent().expect("inner path has a parent"));
        let status = std::process::Command::new("cp").arg("-a").arg(from).arg(&target).status();
        failed |= !status.is_ok_and(|s| s.success());
    }
    for script in &scripts {
        let out = tb.sh(script);
        println!("# {script}\n{}{}", out.stdout, out.stderr);
        failed |= !out.success();
    }
    if wait {
        println!(
            "enter it with: nsenter -t {} -a  (root: {}); press Enter to power off",
            tb.pid1(),
            tb.root().display()
        );
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
