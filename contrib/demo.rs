//! The demo behind README's first command (`contrib/demo`): boots the
//! testbed, builds the sample images from images/, and shows wharf's flows
//! in it, printing each command and its output. Any failing step stops the
//! demo with a non-zero exit status.

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::path::PathBuf;
use std::process::ExitCode;

use testbed::{BootOptions, Release, Testbed, images};

fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("\n==> the demo ran every step");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    // target/<profile>/examples/demo -> target/<profile>, where cargo put the binaries.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .and_then(|examples| examples.parent())
        .map(PathBuf::from)
        .ok_or_else(|| format!("cannot tell the binary directory from {}", exe.display()))
}

fn run() -> Result<(), String> {
    let release = Release::from_env().map_err(|e| e.to_string())?;
    let bin_dir = bin_dir()?;
    for bin in ["portable", "machine", "wharfd"] {
        if !bin_dir.join(bin).is_file() {
            return Err(format!("{bin} is not built in {}: run contrib/demo", bin_dir.display()));
        }
    }

    heading(&format!("booting the testbed: Debian {} with systemd as PID 1, in a container", release.name()));
    let tb = Testbed::boot(&BootOptions { release, bin_dir, label: "demo".into() }).map_err(|e| e.to_string())?;
    show(&tb, "systemctl --version | head -1")?;
    show(&tb, "systemctl is-system-running")?;

    heading("building the sample images from images/");
    let pool = tb.host_path("/var/lib/portables");
    std::fs::create_dir_all(&pool).map_err(|e| e.to_string())?;
    for (file, format, version) in [("foobar.raw", "squashfs", "1"), ("foobar_2.raw.xz", "xz", "2")] {
        images::foobar(&pool.join(file), format, version).map_err(|e| e.to_string())?;
        println!("images/foobar/build /var/lib/portables/{file} {format} {version}");
    }

    heading("wharfd is started by the first D-Bus call");
    show(&tb, "systemctl is-active wharfd.service || true")?;
    show(&tb, "portable list")?;
    show(&tb, "systemctl is-active wharfd.service")?;

    heading("a portable service: inspect, attach, start it with plain systemctl");
    show(&tb, "portable inspect foobar.raw")?;
    show(&tb, "portable attach foobar.raw")?;
    show(&tb, "cat /etc/systemd/system/foobar.service.d/20-portable.conf")?;
    show(&tb, "systemctl start foobar.service && sleep 0.5")?;
    show(&tb, "systemctl status foobar.service --no-pager --lines=3")?;
    show(&tb, "systemctl show -p RootImage -p DynamicUser -p ProtectSystem foobar.service")?;
    show(&tb, "portable list")?;

    heading("an upgrade while it runs: reattach version 2, shipped as .raw.xz (portablectl cannot read those)");
    show(&tb, "portable reattach foobar_2.raw.xz")?;
    show(&tb, "systemctl show -p RootImage -p ActiveState foobar.service")?;
    show(&tb, "cat /proc/$(systemctl show -p MainPID --value foobar.service)/root/usr/lib/os-release | grep PRETTY")?;

    heading("a machine: import the f28 image, boot it with wharf's own launcher, with limits");
    let f28 = images::f28_tarball().map_err(|e| e.to_string())?;
    let staged = tb.host_path("/srv/f28.tar");
    std::fs::create_dir_all(staged.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    std::fs::copy(&f28, &staged).map_err(|e| e.to_string())?;
    println!("images/f28/build (debootstrap, cached) -> /srv/f28.tar");
    show(&tb, "machine import-tar /srv/f28.tar f28")?;
    show(&tb, "machine list-images")?;
    show(&tb, "machine start f28 --property=MemoryMax=512M --property=TasksMax=200")?;
    show(&tb, "machinectl list")?;
    show(&tb, "machine shell f28 systemctl is-system-running")?;
    show(&tb, "machine shell f28 sh -c 'cat /etc/os-release | head -1; exit 3' || echo \"exit status $?\"")?;
    show(&tb, "machine set-property f28 MemoryMax=256M && machine show f28")?;
    show(&tb, "cat /sys/fs/cgroup/memory/machine.slice/wharf-f28.service/memory.limit_in_bytes")?;
    show(&tb, "machine poweroff f28 && machinectl list")?;

    heading("detach: refused while running, then with --now");
    heading("detach: refused while running, then with --now");
    show(&tb, "portable detach foobar_2.raw || true")?;
    show(&tb, "portable detach --now foobar_2.raw")?;
    show(&tb, "ls /etc/systemd/system | grep foobar || echo 'no foobar units left'")?;

    heading("only root changes state; anyone may look");
    show(&tb, "setpriv --reuid=nobody --regid=nogroup --clear-groups portable attach foobar.raw || true")?;
    show(&tb, "setpriv --reuid=nobody --regid=nogroup --clear-groups portable is-attached foobar.raw || true")?;

    heading("powering the testbed off");
    tb.poweroff().map_err(|e| e.to_string())
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

/// Prints a command as typed in the testbed, runs it, prints its output;
/// a failure ends the demo.
fn show(tb: &Testbed, command: &str) -> Result<(), String> {
    println!("# {command}");
    let out = tb.sh(command);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    if out.success() { Ok(()) } else { Err(format!("`{command}` exited with {:?}", out.code)) }
}
