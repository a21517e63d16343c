//! Packaging: what meson-compat installs (the tree the testbed runs), that
//! its man pages format cleanly and its completions load, that meson's
//! defaults follow the host's systemd, and that wharfd's sandbox in
//! wharfd.service is in force and still lets wharfd do all its work.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::CommandFactory;
use libtest_mimic::{Failed, Trial};

use crate::testbed::install::{EXPECTED, repo_dir, staged_tree};
use crate::testbed::{Testbed, images, run_host};
use crate::{Shared, bin_dir, exclusive_trial, trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        Trial::test("packaging::meson_installs_every_file_with_its_mode", installed_tree),
        Trial::test("packaging::man_pages_format_without_warnings_and_document_every_command", man_pages),
        Trial::test("packaging::bash_loads_the_completions", completions),
        // Alone: its images come and go in /var/lib/portables, which other
        // trials list before and after to see that nothing was left there.
        exclusive_trial(shared, "packaging::zsh_and_fish_complete_names", zsh_and_fish_complete_names),
        Trial::test("packaging::meson_defaults_follow_systemd_pc", meson_defaults),
        trial(shared, "packaging::systemd_analyze_verifies_the_installed_unit", unit_verifies),
        trial(shared, "packaging::wharfd_runs_sandboxed", wharfd_sandboxed),
        trial(shared, "packaging::systemd_analyze_security_of_wharfd_is_at_most_3_5", wharfd_exposure),
        trial(shared, "packaging::the_sandbox_lets_wharfd_import_devices_owners_and_capabilities", sandboxed_imports),
        exclusive_trial(shared, "packaging::the_sandbox_lets_wharfd_change_images_in_etc_and_run", sandboxed_pools),
    ]
}

fn stage() -> Result<PathBuf, Failed> {
    staged_tree(&bin_dir()).map_err(|e| Failed::from(e.to_string()))
}

/// Every file below `dir`, relative to it, with its mode.
fn files_below(dir: &Path) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o7777, 0o755, "mode of the directory {}", entry.path().display());
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                found.insert(relative, meta.mode() & 0o7777);
            }
        }
    }
    found
}

/// The staged tree holds exactly the expected files, with their modes; the
/// binaries are the ones under test and the data files the repository's.
fn installed_tree() -> Result<(), Failed> {
    let stage = stage()?;
    let installed = files_below(&stage);
    let expected: BTreeMap<String, u32> = EXPECTED.iter().map(|(path, mode)| (path.to_string(), *mode)).collect();
    assert_eq!(installed, expected, "the meson-compat install tree differs from the expected one");

    for (binary, installed) in
        [("portable", "usr/bin/portable"), ("machine", "usr/bin/machine"), ("wharfd", "usr/lib/wharf/wharfd")]
    {
        let same = std::fs::read(bin_dir().join(binary)).unwrap() == std::fs::read(stage.join(installed)).unwrap();
        assert!(same, "{installed} is not the {binary} under test in {}", bin_dir().display());
    }
    let mut from_repo = vec![
        ("units/wharfd.service", "usr/lib/systemd/system/wharfd.service".to_string()),
        ("units/wharf-machine@.service", "usr/lib/systemd/system/wharf-machine@.service".to_string()),
        ("units/wharf.tmpfiles", "usr/lib/tmpfiles.d/wharf.conf".to_string()),
        ("dbus/org.wharf1.conf", "usr/share/dbus-1/system.d/org.wharf1.conf".to_string()),
        ("dbus/org.wharf1.service", "usr/share/dbus-1/system-services/org.wharf1.service".to_string()),
        ("dbus/org.wharf1.xml", "usr/share/dbus-1/interfaces/org.wharf1.xml".to_string()),
        ("units/org.wharf1.policy", "usr/share/polkit-1/actions/org.wharf1.policy".to_string()),
    ];
    // Every profile of the repository, each of its files: a profile added
    // to units/profiles but not to meson.build is caught here.
    let mut profiles: Vec<(String, String)> = Vec::new();
    for profile in std::fs::read_dir(repo_dir().join("units/profiles")).unwrap().flatten() {
        for file in std::fs::read_dir(profile.path()).unwrap().flatten() {
            let relative = file.path().strip_prefix(repo_dir()).unwrap().to_string_lossy().into_owned();
            let name = format!("{}/{}", profile.file_name().to_string_lossy(), file.file_name().to_string_lossy());
            profiles.push((relative, format!("usr/lib/wharf/profiles/{name}")));
        }
    }
    assert!(profiles.len() >= 4, "profiles: {profiles:?}");
    from_repo.extend(profiles.iter().map(|(from, to)| (from.as_str(), to.clone())));
    for (source, installed) in from_repo {
        let same = std::fs::read(repo_dir().join(source)).unwrap() == std::fs::read(stage.join(&installed)).unwrap();
        assert!(same, "{installed} is not {source}");
    }
    Ok(())
}

/// Runs a host tool that the check needs; its absence is a failure that
/// names the package (contrib/packages has them).
fn host_tool(command: &mut Command, package: &str) -> std::process::Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?} ({e}): install the Debian package '{package}'"))
}

/// Each page formats at 80 columns without a warning from man or groff,
/// and documents every command and option of its tool.
fn man_pages() -> Result<(), Failed> {
    let stage = stage()?;
    let pages: Vec<&str> =
        EXPECTED.iter().map(|(path, _)| *path).filter(|path| path.starts_with("usr/share/man/")).collect();
    assert_eq!(pages.len(), 6);
    for page in &pages {
        let path = stage.join(page);
        let man = host_tool(
            Command::new("man").args(["--warnings", "-l"]).arg(&path).env("MANWIDTH", "80").env("MANPAGER", "cat"),
            "man-db",
        );
        let warnings = String::from_utf8_lossy(&man.stderr);
        assert!(man.status.success() && warnings.is_empty(), "man --warnings -l {page}: {}\n{warnings}", man.status);
        let text = String::from_utf8_lossy(&man.stdout).into_owned();
        assert!(text.lines().count() > 50, "{page} is nearly empty:\n{text}");
        let groff = host_tool(Command::new("groff").args(["-wall", "-man", "-z"]).arg(&path), "groff-base");
        let warnings = String::from_utf8_lossy(&groff.stderr);
        assert!(groff.status.success() && warnings.is_empty(), "groff -wall -man -z {page}:\n{warnings}");
    }
    for (page, command) in [
        ("usr/share/man/man1/portable.1", wharf::cli::portable::Cli::command()),
        ("usr/share/man/man1/machine.1", wharf::cli::machine::Cli::command()),
        ("usr/share/man/man8/wharfd.8", wharf::cli::wharfd::Args::command()),
    ] {
        let roff = std::fs::read_to_string(stage.join(page)).unwrap();
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            let heading = format!("\\fB{}\\fR", sub.get_name().replace('-', "\\-"));
            assert!(roff.contains(&heading), "{page} does not document the command {}", sub.get_name());
        }
        let visible = command.get_subcommands().filter(|sub| !sub.is_hide_set());
        for arg in visible.flat_map(|sub| sub.get_arguments()).chain(command.get_arguments()) {
            if let Some(long) = arg.get_long().filter(|_| !arg.is_hide_set()) {
                let option = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                assert!(roff.contains(&option), "{page} does not document --{long}");
            }
        }
    }
    Ok(())
}

/// bash reads each completion and registers it for its command.
fn completions() -> Result<(), Failed> {
    let stage = stage()?;
    for tool in ["portable", "machine"] {
        let file = stage.join("usr/share/bash-completion/completions").join(tool);
        let out = run_host(
            Command::new("bash").arg("-c").arg(format!("set -e; . '{}'; complete -p {tool}", file.display())),
            "loading a bash completion",
        )
        .map_err(|e| Failed::from(e.to_string()))?;
        let registered = String::from_utf8_lossy(&out.stdout);
        assert!(registered.trim_end().ends_with(&format!(" {tool}")), "{registered}");
        for (shell_file, marker) in [
            (format!("usr/share/zsh/site-functions/_{tool}"), format!("#compdef {tool}")),
            (format!("usr/share/fish/vendor_completions.d/{tool}.fish"), format!("complete -c {tool} ")),
        ] {
            let text = std::fs::read_to_string(stage.join(&shell_file)).unwrap();
            assert!(text.contains(&marker), "{shell_file} lacks {marker:?}");
        }
    }
    Ok(())
}

/// A portable image whose name is shell code: completing it must offer the
/// name, never run it (it would leave `zcomp-owned` in the working
/// directory).
const HOSTILE: &str = "zcomp_$(touch${IFS}zcomp-owned)";

/// Drives zsh's completion as a user's Tab does, without a terminal: an
/// interactive zsh on a pseudo-terminal (zpty) gets the line and a Tab;
/// every match that reaches compadd is printed as `<zcomp>MATCH` on a
/// line of its own, the
/// rest (the echoed line, any error) as it comes. Debian's zsh does not
/// look in /usr/share/zsh/site-functions, where wharf installs (as upstream
/// zsh does), so the init puts it first in fpath.
const ZSH_INIT: &str = r#"PROMPT=
fpath=(/usr/share/zsh/site-functions $fpath)
autoload -U compinit && compinit -u -D
bindkey '^I' complete-word
zstyle ':completion:*' insert-tab false
comppostfuncs=(exit)
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a __zcomp_hits
    builtin compadd -O __zcomp_hits "$@"
    (( $#__zcomp_hits )) && print -rl -- '' "<zcomp>"${^__zcomp_hits}
    builtin compadd "$@"
}
print -r -- '<zcomp-ready>'
"#;

const ZSH_DRIVER: &str = r#"zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'source /root/zcomp-init.zsh'
zpty -r -m z line '*<zcomp-ready>*' || exit 3
zpty -w z "$1"$'\t'
while zpty -r z line; do print -rn -- "$line"; done | tr -d '\r'
"#;

/// zsh and fish complete the names bash does (contrib/gen.rs makes all
/// three from one table): images where a verb takes an image, attached
/// ones for detach, profiles for --profile, machine images, set-property's
/// limits, and files where a path does as well; clap's verbs and options
/// still complete. Every completion file loads in its shell without a word
/// on stderr. An image named with shell code is completed as that name and
/// never run, in bash, zsh and fish. Its own names (zcomp*), so it shares
/// the testbed.
fn zsh_and_fish_complete_names(tb: &Testbed) {
    let clean = "portable detach zcompa >/dev/null 2>&1; rm -rf /var/lib/portables/zcomp* /var/lib/machines/zcompm \
                 /root/zcomp /root/zcomp-init.zsh /root/zcomp.zsh /root/zcomp-bash.sh; true";
    tb.ok(clean);
    for name in ["zcompa", "zcompb", HOSTILE] {
        let image = tb.host_path(&format!("/var/lib/portables/{name}"));
        images::foobar_as(&image, name, "foobar-hello.service").unwrap();
    }
    tb.ok("portable attach zcompa && mkdir -p /var/lib/machines/zcompm/etc /root/zcomp/files \
           && touch /root/zcomp/files/zcompdisk.raw");
    let listed = tb.ok("portable list --no-legend");
    assert!(listed.lines().any(|line| line.starts_with(&format!("{HOSTILE} "))), "{listed}");
    let images = tb.ok("machine list-images --no-legend");
    assert!(images.lines().any(|line| line.starts_with("zcompm ")), "{images}");

    for tool in ["portable", "machine"] {
        for load in [
            format!("bash -c 'set -e; . /usr/share/bash-completion/completions/{tool}; complete -p {tool}'"),
            format!(
                "fish -c 'source /usr/share/fish/vendor_completions.d/{tool}.fish; functions -q _wharf_{tool}_source'"
            ),
            format!(
                "zsh -f -c 'autoload -U compinit && compinit -u -D && source /usr/share/zsh/site-functions/_{tool} \
                 && (( $+functions[_wharf_{tool}_source] && $+functions[_wharf_{tool}_clap] ))'"
            ),
        ] {
            let out = tb.sh(&load);
            assert!(out.success() && out.stderr.is_empty(), "{out}");
        }
    }

    std::fs::write(tb.host_path("/root/zcomp-init.zsh"), ZSH_INIT).unwrap();
    std::fs::write(tb.host_path("/root/zcomp.zsh"), ZSH_DRIVER).unwrap();
    std::fs::write(
        tb.host_path("/root/zcomp-bash.sh"),
        "tool=$1; shift; . /usr/share/bash-completion/completions/$tool\n\
         COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()\n\
         _wharf_$tool $tool \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n\
         printf '%s\\n' \"${COMPREPLY[@]}\"\n",
    )
    .unwrap();
    let sorted = |words: Vec<String>| {
        let mut words: Vec<String> = words.into_iter().filter(|word| !word.is_empty()).collect();
        words.sort();
        words
    };
    // The line is completed in /root/zcomp, as typed there; single quotes
    // keep the hostile name away from the shell that runs the command.
    let fish = |line: &str| {
        let out = tb.ok(&format!("cd /root/zcomp && fish -c 'complete -C \"{line}\"'"));
        sorted(out.lines().map(|line| line.split('\t').next().unwrap_or_default().to_string()).collect())
    };
    let zsh = |line: &str| {
        let out = tb.ok(&format!("cd /root/zcomp && timeout 30 zsh /root/zcomp.zsh '{line}'"));
        let (matches, rest): (Vec<&str>, Vec<&str>) = out.lines().partition(|line| line.contains("<zcomp>"));
        let rest = rest.join("\n");
        assert!(!rest.contains("_portable:") && !rest.contains("_machine:") && !rest.contains("_wharf_"), "{rest}");
        // The echo of the line may precede a match on its line.
        sorted(matches.iter().filter_map(|line| line.split_once("<zcomp>")).map(|(_, word)| word.to_string()).collect())
    };
    let bash = |words: &str| {
        let out = tb.ok(&format!("cd /root/zcomp && bash /root/zcomp-bash.sh {words}"));
        sorted(out.lines().map(str::to_string).collect())
    };

    let images = sorted(vec![HOSTILE.to_string(), "zcompa".to_string(), "zcompb".to_string()]);
    let limits = ["MemoryHigh=", "MemoryLow=", "MemoryMax=", "MemorySwapMax="];
    for (line, expected) in [
        ("portable inspect zc", images.clone()),
        ("portable reattach --profile trusted zc", images.clone()),
        ("portable detach zc", vec!["zcompa".to_string()]),
        ("portable attach --profile str", vec!["strict".to_string()]),
        ("portable inspect --ca", vec!["--cat".to_string()]),
        ("portable det", vec!["detach".to_string()]),
        ("machine show-image zcomp", vec!["zcompm".to_string()]),
        ("machine start zcomp", vec!["zcompm".to_string()]),
        ("machine status zcomp", vec![]),
        ("machine status files/zc", vec![]),
        ("machine set-property zcompm Memory", limits.map(str::to_string).to_vec()),
    ] {
        assert_eq!(fish(line), expected, "fish completing '{line}'");
        assert_eq!(zsh(line), expected, "zsh completing '{line}'");
    }
    for shell in [&fish as &dyn Fn(&str) -> Vec<String>, &zsh] {
        let profiles = shell("portable attach -p ");
        for profile in ["default", "nonetwork", "strict", "trusted"] {
            assert!(profiles.contains(&profile.to_string()), "{profiles:?}");
        }
        // A path does as well as an image's name: files complete too
        // (zsh's matches are the file names, below the typed directory).
        let files = shell("portable inspect files/zc");
        assert!(files.len() == 1 && files[0].ends_with("zcompdisk.raw"), "{files:?}");
    }
    assert_eq!(zsh("portable attach --profile=str"), ["strict"]);
    assert_eq!(bash("portable portable inspect zc"), images);
    assert_eq!(bash("machine machine set-property zcompm Memory"), limits);
    tb.ok("test ! -e /root/zcomp/zcomp-owned");
    tb.ok(clean);
}

/// A build with meson's defaults installs below /usr, units and tmpfiles
/// where the host's systemd.pc says (else below /usr/lib); `meson
/// introspect` tells without building anything.
fn meson_defaults() -> Result<(), Failed> {
    let build = std::env::temp_dir().join(format!("wharf-meson-defaults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    let result = (|| -> Result<(), Failed> {
        let setup = run_host(
            Command::new("meson").arg("setup").arg(&build).arg(repo_dir().join("meson-compat")),
            "meson setup with the defaults",
        )
        .map_err(|e| Failed::from(e.to_string()))?;
        assert!(
            !String::from_utf8_lossy(&setup.stdout).contains("WARNING"),
            "{}",
            String::from_utf8_lossy(&setup.stdout)
        );
        let out = run_host(Command::new("meson").args(["introspect", "--installed"]).arg(&build), "meson introspect")
            .map_err(|e| Failed::from(e.to_string()))?;
        let installed: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
        let mut destinations: Vec<&str> = installed.values().map(String::as_str).collect();
        destinations.sort();
        let pkg_config = |variable: &str, fallback: &str| {
            Command::new("pkg-config")
                .args([&format!("--variable={variable}"), "systemd"])
                .output()
                .ok()
                .filter(|out| out.status.success() && !out.stdout.trim_ascii().is_empty())
                .map(|out| String::from_utf8_lossy(out.stdout.trim_ascii()).into_owned())
                .unwrap_or_else(|| fallback.to_string())
        };
        let unit_dir = pkg_config("systemdsystemunitdir", "/usr/lib/systemd/system");
        let tmpfiles_dir = pkg_config("tmpfilesdir", "/usr/lib/tmpfiles.d");
        let mut expected: Vec<String> = EXPECTED
            .iter()
            .map(|(path, _)| {
                let path = format!("/{path}");
                path.replace("/usr/lib/systemd/system", &unit_dir).replace("/usr/lib/tmpfiles.d", &tmpfiles_dir)
            })
            .collect();
        expected.sort();
        assert_eq!(destinations, expected);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&build);
    result
}

/// The unit as installed passes systemd's own checks (unknown or misspelt
/// settings, a wrong ExecStart path).
fn unit_verifies(tb: &Testbed) {
    // --man=no: the testbed has no man-db to look up Documentation=man:wharfd(8).
    let out = tb.sh("systemd-analyze verify --man=no wharfd.service");
    let complaints: Vec<&str> =
        out.stderr.lines().chain(out.stdout.lines()).filter(|line| line.contains("wharfd")).collect();
    assert!(out.success() && complaints.is_empty(), "{out}");
}

/// `systemd-analyze security` rates wharfd.service's sandbox at 3.5 or
/// better (lower is better): wharfd can start root units, so this is not
/// its boundary (see machine(1)), but what it reads of hostile input it
/// reads with as little as it needs.
fn wharfd_exposure(tb: &Testbed) {
    let out = tb.ok("systemd-analyze security --no-pager wharfd.service");
    let level = out
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for wharfd.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in {out}"));
    assert!(level <= 3.5, "wharfd.service's exposure is {level}, above 3.5:\n{out}");
}

/// The sandbox of wharfd.service is in force on the running wharfd.
fn wharfd_sandboxed(tb: &Testbed) {
    tb.ok("portable list >/dev/null");
    let status = tb.ok("cat /proc/$(systemctl show -p MainPID --value wharfd.service)/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no system call filter");
    // Exactly the capabilities wharfd uses: CHOWN, DAC_OVERRIDE,
    // DAC_READ_SEARCH, FOWNER, FSETID, LINUX_IMMUTABLE, SYS_ADMIN, MKNOD,
    // SETFCAP (`machine shell` commands, which need more, run in units of
    // their own).
    let bounding = u64::from_str_radix(&field("CapBnd"), 16).unwrap();
    let expected: u64 = [0, 1, 2, 3, 4, 9, 21, 27, 31].iter().map(|bit| 1u64 << bit).sum();
    assert_eq!(bounding, expected, "wharfd's CapBnd {bounding:x}, not {expected:x}");
    let namespaces = tb.ok("systemctl show -p RestrictNamespaces --value wharfd.service");
    assert_eq!(namespaces.trim(), "mnt");
    // The file system is read-only for wharfd but where it writes (wharfd
    // runs as root: only the sandbox stands in its way).
    let mounts = tb.ok("cat /proc/$(systemctl show -p MainPID --value wharfd.service)/mountinfo");
    let writable = |point: &str| {
        let entry =
            mounts.lines().map(|line| line.split(' ').collect::<Vec<_>>()).find(|fields| fields.get(4) == Some(&point));
        let options = entry.unwrap_or_else(|| panic!("{point} is not a mount point for wharfd:\n{mounts}"))[5];
        options.split(',').any(|option| option == "rw")
    };
    assert!(!writable("/"), "/ is writable for wharfd");
    // /etc/systemd as a whole: portabled's system.attached, where wharf
    // mirrors its attachments, comes and goes.
    assert!(writable("/var/lib/portables") && writable("/etc/systemd"), "{mounts}");
}

/// A tar archive and a tree holding a device node, a FIFO, a set-user-ID
/// file of another owner and a file with file capabilities import
/// unchanged: whatever wharfd.service takes away from wharfd (capabilities,
/// devices, system calls), it keeps what that takes. A trusted extended
/// attribute comes with the local tree (import-fs) but not from an archive,
/// which may be anyone's: overlayfs obeys trusted.overlay.* attributes.
fn sandboxed_imports(tb: &Testbed) {
    let tree = tb.host_path("/srv/packaging/tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
    images::foobar(&tree, "dir", "1").unwrap();
    tb.ok("cd /srv/packaging/tree && mknod dev-null c 1 3 && mkfifo fifo && \
         printf x > suid && chown 1234:1234 suid && chmod 6755 suid && printf y > capable");
    // security.capability: VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted.
    let capability: Vec<u8> = [0x0200_0000u32, 1 << 10, 0, 0, 0].iter().flat_map(|word| word.to_le_bytes()).collect();
    xattr::set(tree.join("capable"), "security.capability", &capability).unwrap();
    xattr::set(tree.join("capable"), "trusted.wharf", b"kept").unwrap();
    tb.ok("tar --xattrs --xattrs-include='*' --numeric-owner -C /srv/packaging/tree -cf /srv/packaging/tree.tar .");
    let stat = |files: &str| format!("stat -c '%n %F %t:%T %a %u:%g' {files}");
    for (command, source, name, files) in [
        ("import-tar", "/srv/packaging/tree.tar", "sandbox-tar", "dev-null fifo suid capable"),
        ("import-fs", "/srv/packaging/tree", "sandbox-fs", "dev-null fifo suid capable"),
    ] {
        let original = tb.ok(&format!("cd /srv/packaging/tree && {}", stat(files)));
        tb.ok(&format!("machine {command} {source} {name}"));
        let image = format!("/var/lib/machines/{name}");
        assert_eq!(tb.ok(&format!("cd {image} && {}", stat(files))), original, "{command}");
        let imported = tb.host_path(&format!("{image}/capable"));
        assert_eq!(xattr::get(&imported, "security.capability").unwrap(), Some(capability.clone()), "{command}");
        let trusted = if command == "import-fs" { Some(&b"kept"[..]) } else { None };
        assert_eq!(xattr::get(&imported, "trusted.wharf").unwrap().as_deref(), trusted, "{command}");
        tb.ok(&format!("machine remove {name}"));
    }
    tb.ok("rm -rf /srv/packaging");
}

/// Images in /etc and /run (not only /var/lib) can be marked read-only,
/// renamed and removed: those directories are writable in wharfd's sandbox
/// when they exist as it starts. (Exclusive: it restarts wharfd.)
fn sandboxed_pools(tb: &Testbed) {
    // Made on the host, moved in from inside: the testbed's /run is a tmpfs
    // the host does not see.
    let made = tb.host_path("/srv/sandbox-pool");
    std::fs::create_dir_all(&made).unwrap();
    images::foobar(&made.join("portable.raw"), "squashfs", "1").unwrap();
    images::foobar(&made.join("machine"), "dir", "1").unwrap();
    // wharfd makes /etc/portables and /run/portables itself, at every start.
    tb.ok("mkdir /etc/machines /run/machines && systemctl stop wharfd.service");
    for dir in ["/etc/portables", "/run/portables"] {
        let image = format!("{dir}/sandbox-pool.raw");
        tb.ok(&format!("cp /srv/sandbox-pool/portable.raw {image}"));
        tb.ok(&format!("portable read-only {image} && test \"$(stat -c %a {image})\" = 444"));
        tb.ok(&format!("portable read-only {image} no && portable remove {image} && test ! -e {image}"));
    }
    for dir in ["/etc/machines", "/run/machines"] {
        let image = format!("{dir}/sandbox-pool");
        tb.ok(&format!("cp -a /srv/sandbox-pool/machine {image}"));
        tb.ok(&format!("machine read-only {image}"));
        let listed = tb.ok("machine list-images --json");
        let entry = format!(r#""path":"{image}","kind":"directory","state":"stopped","read_only":true"#);
        assert!(listed.contains(&entry), "{listed}");
        tb.ok(&format!(
            "machine read-only {image} no && machine rename sandbox-pool sandbox-renamed \
             && machine remove sandbox-renamed && test ! -e {dir}/sandbox-renamed"
        ));
    }
    tb.ok("rmdir /etc/machines /run/machines && rm -r /srv/sandbox-pool");
}
