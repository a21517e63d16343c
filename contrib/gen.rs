//! Man pages and shell completions for wharf:
//!
//!     cargo run --example gen -- man OUTDIR
//!     cargo run --example gen -- completions OUTDIR
//!
//! A page's synopsis, commands and options come from the clap definitions,
//! so they cannot drift from what the tools parse; everything else (the
//! description, files, examples, exit status...) is prose written by hand in
//! `man/NAME.SECTION.in`. A template is plain roff with directive comments
//! (`.\" @synopsis`) where the generated parts go; see `man/README`.
//!
//! This is an example, not a binary or a build script: it is built only by
//! whoever packages wharf (meson-compat runs it), the installed binaries do
//! not carry clap_mangen or clap_complete, and a normal build does not pay
//! for it.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

#[path = "json_schema.rs"]
mod json_schema;

use clap::{Arg, Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One man page: `NAME.SECTION`, made from its template and, for a
/// command's page, the command's clap definition.
struct Page {
    name: &'static str,
    section: &'static str,
    template: &'static str,
    command: Option<fn() -> Command>,
}

const PAGES: &[Page] = &[
    Page {
        name: "portable",
        section: "1",
        template: include_str!("../man/portable.1.in"),
        command: Some(wharf::cli::portable::Cli::command),
    },
    Page {
        name: "machine",
        section: "1",
        template: include_str!("../man/machine.1.in"),
        command: Some(wharf::cli::machine::Cli::command),
    },
    Page {
        name: "wharfd",
        section: "8",
        template: include_str!("../man/wharfd.8.in"),
        command: Some(wharf::cli::wharfd::Args::command),
    },
    Page { name: "wharf-profiles", section: "7", template: include_str!("../man/wharf-profiles.7.in"), command: None },
    Page {
        name: "wharf-machine.toml",
        section: "5",
        template: include_str!("../man/wharf-machine.toml.5.in"),
        command: None,
    },
    Page { name: "wharf-fleet", section: "5", template: include_str!("../man/wharf-fleet.5.in"), command: None },
];

/// The shipped sandbox profiles, quoted in wharf-profiles(7) as installed.
const PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../units/profiles/default/service.conf")),
    ("nonetwork", include_str!("../units/profiles/nonetwork/service.conf")),
    ("strict", include_str!("../units/profiles/strict/service.conf")),
    ("trusted", include_str!("../units/profiles/trusted/service.conf")),
];

/// The schemas of the tools' `--json` documents (see contrib/json_schema.rs),
/// built in so that a change to one makes the pages again; a test checks
/// that these are exactly the files of man/json/.
const SCHEMAS: &[(&str, &str)] = &[
    ("error", include_str!("../man/json/error.json")),
    ("machine-apply", include_str!("../man/json/machine-apply.json")),
    ("machine-bind", include_str!("../man/json/machine-bind.json")),
    ("machine-cancel-transfer", include_str!("../man/json/machine-cancel-transfer.json")),
    ("machine-clean", include_str!("../man/json/machine-clean.json")),
    ("machine-clone", include_str!("../man/json/machine-clone.json")),
    ("machine-copy-from", include_str!("../man/json/machine-copy-from.json")),
    ("machine-copy-to", include_str!("../man/json/machine-copy-to.json")),
    ("machine-disable", include_str!("../man/json/machine-disable.json")),
    ("machine-enable", include_str!("../man/json/machine-enable.json")),
    ("machine-export-raw", include_str!("../man/json/machine-export-raw.json")),
    ("machine-export-tar", include_str!("../man/json/machine-export-tar.json")),
    ("machine-history", include_str!("../man/json/machine-history.json")),
    ("machine-image-status", include_str!("../man/json/machine-image-status.json")),
    ("machine-import", include_str!("../man/json/machine-import.json")),
    ("machine-import-fs", include_str!("../man/json/machine-import-fs.json")),
    ("machine-import-raw", include_str!("../man/json/machine-import-raw.json")),
    ("machine-import-tar", include_str!("../man/json/machine-import-tar.json")),
    ("machine-kill", include_str!("../man/json/machine-kill.json")),
    ("machine-list", include_str!("../man/json/machine-list.json")),
    ("machine-list-images", include_str!("../man/json/machine-list-images.json")),
    ("machine-list-transfers", include_str!("../man/json/machine-list-transfers.json")),
    ("machine-login", include_str!("../man/json/machine-login.json")),
    ("machine-poweroff", include_str!("../man/json/machine-poweroff.json")),
    ("machine-pull-oci", include_str!("../man/json/machine-pull-oci.json")),
    ("machine-pull-raw", include_str!("../man/json/machine-pull-raw.json")),
    ("machine-pull-tar", include_str!("../man/json/machine-pull-tar.json")),
    ("machine-read-only", include_str!("../man/json/machine-read-only.json")),
    ("machine-reboot", include_str!("../man/json/machine-reboot.json")),
    ("machine-remove", include_str!("../man/json/machine-remove.json")),
    ("machine-rename", include_str!("../man/json/machine-rename.json")),
    ("machine-set-limit", include_str!("../man/json/machine-set-limit.json")),
    ("machine-set-property", include_str!("../man/json/machine-set-property.json")),
    ("machine-shell", include_str!("../man/json/machine-shell.json")),
    ("machine-show", include_str!("../man/json/machine-show.json")),
    ("machine-show-image", include_str!("../man/json/machine-show-image.json")),
    ("machine-start", include_str!("../man/json/machine-start.json")),
    ("machine-status", include_str!("../man/json/machine-status.json")),
    ("machine-terminate", include_str!("../man/json/machine-terminate.json")),
    ("portable-apply", include_str!("../man/json/portable-apply.json")),
    ("portable-attach", include_str!("../man/json/portable-attach.json")),
    ("portable-detach", include_str!("../man/json/portable-detach.json")),
    ("portable-history", include_str!("../man/json/portable-history.json")),
    ("portable-inspect", include_str!("../man/json/portable-inspect.json")),
    ("portable-is-attached", include_str!("../man/json/portable-is-attached.json")),
    ("portable-list", include_str!("../man/json/portable-list.json")),
    ("portable-pull", include_str!("../man/json/portable-pull.json")),
    ("portable-pull-oci", include_str!("../man/json/portable-pull-oci.json")),
    ("portable-read-only", include_str!("../man/json/portable-read-only.json")),
    ("portable-reattach", include_str!("../man/json/portable-reattach.json")),
    ("portable-remove", include_str!("../man/json/portable-remove.json")),
    ("portable-set-limit", include_str!("../man/json/portable-set-limit.json")),
];

/// The commands people type, which get shell completions (wharfd is started
/// by D-Bus, not typed).
fn completed_commands() -> [Command; 2] {
    [wharf::cli::portable::Cli::command(), wharf::cli::machine::Cli::command()]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["man", out] => write_man_pages(Path::new(out)),
        ["completions", out] => write_completions(Path::new(out)),
        _ => Err("usage: gen man OUTDIR | gen completions OUTDIR".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_man_pages(out: &Path) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for page in PAGES {
        let file = format!("{}.{}", page.name, page.section);
        let text = render_page(page).map_err(|e| format!("man/{file}.in: {e}"))?;
        let path = out.join(&file);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Completions named as each shell looks them up: bash by the command's
/// name, zsh as `_NAME`, fish as `NAME.fish`. Each is clap's completion
/// (verbs, options, their fixed values) with the names it cannot know added:
/// those of images, machines, transfers and profiles, asked of `portable` and
/// `machine` themselves (as machinectl's completion asks machinectl) where
/// `NAMES` says a word is one.
fn write_completions(out: &Path) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for mut command in completed_commands() {
        let name = command.get_name().to_string();
        let names = NAMES.iter().find(|names| names.tool == name).ok_or(format!("{name}: no entry in NAMES"))?;
        names.check(&command)?;
        for (shell, file) in
            [(Shell::Bash, name.clone()), (Shell::Zsh, format!("_{name}")), (Shell::Fish, format!("{name}.fish"))]
        {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut text);
            let clap = String::from_utf8(text).map_err(|e| format!("clap's {shell} completion of {name}: {e}"))?;
            let text = match shell {
                Shell::Bash => format!("{clap}{BASH_REPLY_NAMES}{}{}", names.posix_functions(), names.bash()),
                Shell::Zsh => names.zsh(&clap)?,
                _ if !clap.contains(&format!("function __fish_{name}_using_subcommand\n")) => {
                    return Err(format!(
                        "clap's fish completion of {name} no longer has __fish_{name}_using_subcommand"
                    ));
                }
                _ => format!("{clap}{}", names.fish(&command)),
            };
            let path = out.join(file);
            fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The kinds of names a word can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Images in the portable search path.
    Images,
    /// Portable images that are attached (or partly).
    Attached,
    /// Sandbox profiles: the directories in the profile directories, as
    /// wharfd finds them.
    Profiles,
    /// Running machines.
    Machines,
    /// Machine images.
    MachineImages,
    /// wharfd's imports and exports.
    Transfers,
    /// The limits `set-property` takes, as `NAME=`.
    Properties,
}

const SOURCES: [Source; 7] = [
    Source::Images,
    Source::Attached,
    Source::Profiles,
    Source::Machines,
    Source::MachineImages,
    Source::Transfers,
    Source::Properties,
];

impl Source {
    fn key(self) -> &'static str {
        match self {
            Source::Images => "images",
            Source::Attached => "attached",
            Source::Profiles => "profiles",
            Source::Machines => "machines",
            Source::MachineImages => "machine-images",
            Source::Transfers => "transfers",
            Source::Properties => "properties",
        }
    }

    /// A pipeline that prints the names, one a line. It is written in
    /// the words bash, zsh and fish share, so that every shell runs the
    /// same one: a command, its arguments in single quotes, `|` and
    /// `2>/dev/null`.
    fn command(self) -> String {
        let first_column = "--no-legend --no-pager 2>/dev/null | awk '{print $1}'";
        match self {
            Source::Images => format!("portable list {first_column}"),
            Source::Attached => {
                "portable list --no-legend --no-pager 2>/dev/null | awk '$5 != \"detached\" {print $1}'".to_string()
            }
            Source::Profiles => {
                let dirs: Vec<String> =
                    wharf::portable::profile::PROFILE_DIRS.iter().map(|dir| format!("/{dir}")).collect();
                format!(
                    "find -L {} -mindepth 1 -maxdepth 1 -type d -printf '%f\\n' 2>/dev/null | sort -u",
                    dirs.join(" ")
                )
            }
            Source::Machines => format!("machine list {first_column}"),
            Source::MachineImages => format!("machine list-images {first_column}"),
            Source::Transfers => format!("machine list-transfers {first_column}"),
            Source::Properties => {
                let limits: Vec<&str> = wharf::machine::property::LIMITS.iter().map(|limit| limit.name()).collect();
                format!("printf '%s=\\n' {}", limits.join(" "))
            }
        }
    }

    /// A path does as well as a name here, so file names complete too.
    fn or_path(self) -> bool {
        matches!(self, Source::Images | Source::Attached | Source::MachineImages)
    }

    /// The names are the start of a word (`MemoryMax=`), not all of it:
    /// no space after them.
    fn is_prefix(self) -> bool {
        self == Source::Properties
    }
}

/// Where a command's words are names: the one table the three shells'
/// completions are made from, so that they complete the same.
struct Names {
    tool: &'static str,
    /// Options whose value is a name.
    values: &'static [(&'static [&'static str], Source)],
    /// Verbs, the names their first argument is, and those the ones after it are.
    verbs: &'static [(&'static [&'static str], Source, Source)],
}

const NAMES: [Names; 2] = [
    Names {
        tool: "portable",
        values: &[(&["--profile", "-p"], Source::Profiles)],
        verbs: &[
            (&["inspect", "attach", "reattach", "is-attached", "read-only", "remove"], Source::Images, Source::Images),
            (&["detach"], Source::Attached, Source::Attached),
        ],
    },
    Names {
        tool: "machine",
        values: &[],
        verbs: &[
            (
                &[
                    "status",
                    "show",
                    "poweroff",
                    "reboot",
                    "terminate",
                    "kill",
                    "login",
                    "shell",
                    "bind",
                    "copy-to",
                    "copy-from",
                ],
                Source::Machines,
                Source::Machines,
            ),
            (&["set-property"], Source::Machines, Source::Properties),
            (
                &[
                    "show-image",
                    "image-status",
                    "clone",
                    "rename",
                    "remove",
                    "read-only",
                    "start",
                    "enable",
                    "disable",
                    "export-tar",
                    "export-raw",
                    "set-limit",
                ],
                Source::MachineImages,
                Source::MachineImages,
            ),
            (&["cancel-transfer"], Source::Transfers, Source::Transfers),
        ],
    },
];

impl Names {
    /// Every verb and option the table names is one of the command's: a
    /// verb renamed in the CLI would otherwise lose its names silently.
    fn check(&self, command: &Command) -> Result<(), String> {
        for verb in self.verbs.iter().flat_map(|(verbs, _, _)| verbs.iter()) {
            if command.find_subcommand(verb).is_none() {
                return Err(format!("NAMES: {} has no verb {verb}", self.tool));
            }
        }
        let arguments = || command.get_subcommands().flat_map(Command::get_arguments).chain(command.get_arguments());
        for option in self.values.iter().flat_map(|(options, _)| options.iter()) {
            let known = arguments().any(|arg| takes(arg, &[option]));
            if !known {
                return Err(format!("NAMES: {} has no option {option}", self.tool));
            }
        }
        Ok(())
    }

    /// The function prefix of this tool's helpers, `_wharf_portable`.
    fn prefix(&self) -> String {
        format!("_wharf_{}", self.tool.replace('-', "_"))
    }

    fn sources(&self) -> Vec<Source> {
        let used = |source: &Source| {
            self.values.iter().any(|(_, value)| value == source)
                || self.verbs.iter().any(|(_, first, rest)| first == source || rest == source)
        };
        SOURCES.iter().copied().filter(used).collect()
    }

    /// The branches of the helpers' three `case`s, as (patterns, then): a
    /// source's names, an option's source, a verb's. `or` joins patterns;
    /// `either(first, rest)` echoes `first` for a verb's first argument
    /// (`$n` is 0) and `rest` for the others.
    fn branches(&self, or: &str, either: impl Fn(&str, &str) -> String) -> [Vec<(String, String)>; 3] {
        let names = self.sources().into_iter().map(|s| (s.key().to_string(), s.command())).collect();
        let values = self.values.iter().map(|(options, s)| (options.join(or), format!("echo {}", s.key()))).collect();
        let verbs = self
            .verbs
            .iter()
            .map(|(verbs, first, rest)| {
                let then =
                    if first == rest { format!("echo {}", first.key()) } else { either(first.key(), rest.key()) };
                (verbs.join(or), then)
            })
            .collect();
        [names, values, verbs]
    }

    /// A bash and zsh pattern of the keys of the sources `keep` keeps (`''`
    /// when none, which no source's key matches).
    fn pattern(&self, keep: impl Fn(Source) -> bool) -> String {
        let keys: Vec<&str> = self.sources().into_iter().filter(|s| keep(*s)).map(Source::key).collect();
        if keys.is_empty() { "''".to_string() } else { keys.join("|") }
    }

    /// A `case` on `word`, the same in bash and zsh, of (patterns, then) branches.
    fn posix_case(word: &str, branches: Vec<(String, String)>) -> String {
        let mut text = format!("    case \"{word}\" in\n");
        for (patterns, then) in branches {
            text.push_str(&format!("        {patterns}) {then} ;;\n"));
        }
        text.push_str("    esac\n");
        text
    }

    /// The helpers bash and zsh share, in the syntax both read:
    /// `PREFIX_names SOURCE` prints the names of a source;
    /// `PREFIX_value OPTION` the source of an option's value, if a name;
    /// `PREFIX_source WORD...` the source of the word after those given
    /// (the command's name first), if any.
    fn posix_functions(&self) -> String {
        let prefix = self.prefix();
        let [names, values, verbs] =
            self.branches("|", |first, rest| format!("if [ \"$n\" = 0 ]; then echo {first}; else echo {rest}; fi"));
        let names = Self::posix_case("$1", names);
        let values = Self::posix_case("$1", values);
        let verbs = Self::posix_case("$verb", verbs);
        format!(
            r#"
{prefix}_names() {{
{names}}}

{prefix}_value() {{
{values}}}

{prefix}_source() {{
    local prev="" word verb="" n=0
    shift
    for word in "$@"; do
        if [ -z "$({prefix}_value "$prev")" ]; then
            case "$word" in
                -*) ;;
                *) if [ -z "$verb" ]; then verb="$word"; else n=$((n + 1)); fi ;;
            esac
        fi
        prev="$word"
    done
    if [ -n "$prev" ] && [ -n "$({prefix}_value "$prev")" ]; then
        {prefix}_value "$prev"
        return 0
    fi
{verbs}}}
"#
        )
    }

    /// bash: clap's `_TOOL`, wrapped. Names that must be names replace
    /// clap's replies; others join them, less clap's `<NAME>` placeholders.
    fn bash(&self) -> String {
        let prefix = self.prefix();
        let tool = self.tool;
        format!(
            r#"
{prefix}() {{
    _{tool} "$@"
    local cur="${{COMP_WORDS[COMP_CWORD]}}" source
    [[ "$cur" == -* ]] && return 0
    source="$({prefix}_source "${{COMP_WORDS[@]:0:COMP_CWORD}}")"
    [[ -z "$source" ]] && return 0
    case "$source" in
        {only}) COMPREPLY=() ;;
    esac
    case "$source" in
        {nospace}) compopt -o nospace 2>/dev/null ;;
    esac
    _wharf_reply_names "$({prefix}_names "$source")" "$cur"
}}

complete -F {prefix} -o bashdefault -o default {tool}
"#,
            only = self.pattern(|s| !s.or_path()),
            nospace = self.pattern(Source::is_prefix),
        )
    }

    /// zsh: clap's `_TOOL` is kept as `PREFIX_clap` and `_TOOL` becomes a
    /// wrapper that adds the names, then lets clap's add options and
    /// files (only where a path does as well as a name). The wrapper goes
    /// before clap's last lines, which call `_TOOL` when compinit
    /// autoloads the file, or register it when the file is sourced.
    fn zsh(&self, clap: &str) -> Result<String, String> {
        let prefix = self.prefix();
        let tool = self.tool;
        let tail = format!("if [ \"$funcstack[1]\" = \"_{tool}\" ]; then");
        let at = clap.rfind(&tail).ok_or(format!("clap's zsh completion of {tool} no longer ends in `{tail}`"))?;
        if !clap.contains(&format!("\n_{tool}() {{\n")) {
            return Err(format!("clap's zsh completion of {tool} defines no _{tool}"));
        }
        let wrapper = format!(
            r#"{functions}
functions[{prefix}_clap]=$functions[_{tool}]

_{tool}() {{
    local cur="$words[CURRENT]" source="" suffix=" "
    local -a names
    if [[ "$cur" == --*=* ]]; then
        source="$({prefix}_value "${{cur%%=*}}")"
        [[ -n "$source" ]] && compset -P '*='
    elif [[ "$cur" != -* ]]; then
        source="$({prefix}_source "${{(@)words[1,CURRENT-1]}}")"
    fi
    if [[ -n "$source" ]]; then
        [[ "$source" == ({nospace}) ]] && suffix=""
        names=("${{(@f)$({prefix}_names "$source")}}")
        compadd -S "$suffix" -- "${{(@)names:#}}"
        [[ "$source" == ({only}) ]] && return 0
    fi
    {prefix}_clap "$@"
}}

"#,
            functions = self.posix_functions(),
            only = self.pattern(|s| !s.or_path()),
            nospace = self.pattern(Source::is_prefix),
        );
        Ok(format!("{}{wrapper}{}", &clap[..at], &clap[at..]))
    }

    /// fish: a rule a source, after clap's, whose condition is that the
    /// word being completed is one of its names; `-f` where only names do.
    fn fish(&self, command: &Command) -> String {
        let prefix = self.prefix();
        let tool = self.tool;
        let case = |branches: Vec<(String, String)>| -> String {
            let mut text = String::new();
            for (patterns, then) in branches {
                text.push_str(&format!("        case {patterns}\n            {then}\n"));
            }
            text
        };
        let [names, values, verbs] =
            self.branches(" ", |first, rest| format!("if test $n = 0; echo {first}; else; echo {rest}; end"));
        let (names, values, verbs) = (case(names), case(values), case(verbs));
        let files = |source: Source| if source.or_path() { "" } else { " -f" };
        let mut rules = String::new();
        let verb_sources: Vec<Source> = self.verbs.iter().flat_map(|(_, first, rest)| [*first, *rest]).collect();
        for source in self.sources().into_iter().filter(|source| verb_sources.contains(source)) {
            let key = source.key();
            rules.push_str(&format!(
                "complete -c {tool} -n '{prefix}_next {key}'{} -a '({prefix}_names {key})'\n",
                files(source)
            ));
        }
        // fish completes the value of an option that takes one from that
        // option's rules alone: one more rule for it, for the verbs it has.
        for (options, source) in self.values {
            let mut flags = String::new();
            for option in *options {
                match option.strip_prefix("--") {
                    Some(long) => flags.push_str(&format!(" -l {long}")),
                    None => flags.push_str(&format!(" -s {}", option.trim_start_matches('-'))),
                }
            }
            let verbs: Vec<&str> = command
                .get_subcommands()
                .filter(|verb| verb.get_arguments().any(|arg| takes(arg, options)))
                .map(Command::get_name)
                .collect();
            rules.push_str(&format!(
                "complete -c {tool} -n '__fish_{tool}_using_subcommand {}'{flags} -r{} -a '({prefix}_names {})'\n",
                verbs.join(" "),
                files(*source),
                source.key()
            ));
        }
        format!(
            r#"
function {prefix}_names
    switch $argv[1]
{names}    end
end

function {prefix}_value
    switch $argv[1]
{values}    end
end

function {prefix}_source
    set -l prev ''
    set -l verb ''
    set -l n 0
    set -e argv[1]
    for word in $argv
        if test -z "$({prefix}_value $prev)"; and not string match -q -- '-*' $word
            if test -z "$verb"
                set verb $word
            else
                set n (math $n + 1)
            end
        end
        set prev $word
    end
    set -l value ({prefix}_value $prev)
    if test -n "$value"
        echo $value
        return
    end
    switch $verb
{verbs}    end
end

# Whether the word being completed is one of the names of source $argv[1].
function {prefix}_next
    string match -q -- '-*' "$(commandline -ct)"; and return 1
    test "$({prefix}_source (commandline -opc))" = $argv[1]
end

{rules}"#
        )
    }
}

/// Whether `arg` is one of `options` (`--long`, `-s`).
fn takes(arg: &Arg, options: &[&str]) -> bool {
    options.iter().any(|option| match option.strip_prefix("--") {
        Some(long) => arg.get_long() == Some(long),
        None => option.strip_prefix('-').and_then(|short| short.chars().next()) == arg.get_short(),
    })
}

/// Shared by both bash completions: clap's replies without its `<NAME>`
/// placeholders, then the names (`$1`, one a line) that start with the word
/// (`$2`). Not `compgen -W`, which expands the words it is given: a name is
/// never run as shell code.
const BASH_REPLY_NAMES: &str = r#"
_wharf_reply_names() {
    local kept=() word
    for word in "${COMPREPLY[@]}"; do
        [[ "$word" == \<* ]] || kept+=("$word")
    done
    while IFS= read -r word; do
        [[ -n "$word" && "$word" == "$2"* ]] && kept+=("$word")
    done <<< "$1"
    COMPREPLY=("${kept[@]}")
}
"#;

/// Fills a template's directives:
/// - `@title`: the `.TH` line;
/// - `@name`, `@synopsis`, `@options`, `@commands`: from the page's command;
/// - `@profile NAME`: the settings of a shipped profile, as an example block;
/// - `@json`: what each command prints with `--json`, from its schema in
///   `man/json/` (every command of the page's must have one).
///
/// Comment lines before `@title` are notes for the template's editors and
/// are left out.
fn render_page(page: &Page) -> Result<String, String> {
    let command = page.command.map(|make| {
        let mut command = make().subcommand_value_name("COMMAND");
        command.build();
        with_full_stops(command)
    });
    let mut out = format!(
        ".\\\" Generated by contrib/gen.rs from man/{}.{}.in{}; edit those.\n",
        page.name,
        page.section,
        if command.is_some() { " and the command's clap definition" } else { "" }
    );
    // roff's definition of the apostrophe string that escaped text uses.
    out.push_str(&Roff::new().render());
    let mut seen = Vec::new();
    for line in page.template.lines() {
        let Some(directive) = line.strip_prefix(".\\\" @") else {
            if !seen.is_empty() || !line.starts_with(".\\\"") {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        let (word, argument) = directive.split_once(' ').unwrap_or((directive, ""));
        if seen.contains(&directive) {
            return Err(format!("@{directive} appears twice"));
        }
        seen.push(directive);
        let needs_command = || command.as_ref().ok_or(format!("@{word} on a page without a command"));
        let fragment = match word {
            "title" => title(page),
            "name" => name_section(needs_command()?)?,
            "synopsis" => render(|w| man(needs_command()?, page).render_synopsis_section(w).map_err(io))?,
            "options" => render(|w| man(needs_command()?, page).render_options_section(w).map_err(io))?,
            "commands" => commands_section(needs_command()?)?,
            "profile" => profile_block(argument)?,
            "json" => json_section(needs_command()?, &built_in_schemas()?)?,
            _ => return Err(format!("unknown directive @{word}")),
        };
        out.push_str(&fragment);
    }
    let mut required = vec!["title"];
    if let Some(command) = &command {
        required.extend(["name", "synopsis", "options"]);
        if visible_subcommands(command).next().is_some() {
            required.push("commands");
        }
    }
    if let Some(missing) = required.iter().find(|word| !seen.contains(word)) {
        return Err(format!("@{missing} is missing"));
    }
    if page.name == "wharf-profiles"
        && let Some((name, _)) = PROFILES.iter().find(|(name, _)| !seen.contains(&format!("profile {name}").as_str()))
    {
        return Err(format!("the shipped profile '{name}' is not described (@profile {name})"));
    }
    Ok(out)
}

fn man(command: &Command, page: &Page) -> Man {
    Man::new(command.clone()).section(page.section)
}

/// A roff fragment without the apostrophe preamble roff puts before each
/// one (the page has it once, at the top).
fn render(write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> Result<String, String> {
    let preamble = Roff::new().render();
    let mut bytes = Vec::new();
    write(&mut bytes)?;
    let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    Ok(text.strip_prefix(&preamble).unwrap_or(&text).to_string())
}

fn io(error: std::io::Error) -> String {
    error.to_string()
}

fn roff_fragment(roff: &Roff) -> String {
    let preamble = Roff::new().render();
    let text = roff.render();
    text.strip_prefix(&preamble).unwrap_or(&text).to_string()
}

/// `.TH NAME SECTION DATE SOURCE MANUAL`. The date is that of
/// `SOURCE_DATE_EPOCH` when set (reproducible builds), else left out.
fn title(page: &Page) -> String {
    let date = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<i64>().ok()).map(iso_date);
    // Written by hand: roff drops an empty argument, which would shift the
    // others. Then, as systemd's pages do, no hyphenation and a ragged right
    // margin: the pages are full of paths and option names, which neither
    // hyphens nor stretched spaces should break up. (HY too: the man
    // macros turn hyphenation back on to its value after each example.)
    format!(
        ".TH {} {} \"{}\" \"wharf {VERSION}\" \"wharf\"\n.ad l\n.nr HY 0\n.nh\n",
        page.name.to_uppercase(),
        page.section,
        date.unwrap_or_default()
    )
}

/// `YYYY-MM-DD` of a Unix time (days to civil date, proleptic Gregorian).
fn iso_date(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `NAME`: the command and its one-line summary.
fn name_section(command: &Command) -> Result<String, String> {
    let about = command.get_about().ok_or("the command has no about text")?.to_string();
    let mut roff = Roff::new();
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!("{} - {}", command.get_name(), lowercase_first(&about)))]);
    Ok(roff_fragment(&roff))
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `COMMANDS`: each visible subcommand with its arguments, what it does, and
/// its own options (the global ones are under OPTIONS).
fn commands_section(command: &Command) -> Result<String, String> {
    let mut out = String::new();
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    out.push_str(&roff_fragment(&roff));
    for sub in visible_subcommands(command) {
        let own: Vec<&Arg> = sub
            .get_arguments()
            .filter(|arg| {
                !arg.is_hide_set() && !arg.is_global_set() && !["help", "version"].contains(&arg.get_id().as_str())
            })
            .collect();
        let positionals: Vec<&Arg> = own.iter().copied().filter(|arg| arg.is_positional()).collect();
        let options: Vec<&Arg> = own.iter().copied().filter(|arg| !arg.is_positional()).collect();

        let mut heading = vec![bold(sub.get_name())];
        if !options.is_empty() {
            heading.extend([roman(" ["), italic("OPTIONS"), roman("]")]);
        }
        for arg in &positionals {
            let value = value_name(arg);
            let repeated = arg.get_num_args().is_some_and(|n| n.max_values() > 1) && !value.ends_with("...");
            let dots = if repeated { "..." } else { "" };
            // A value name in brackets already says that it is optional.
            if arg.is_required_set() || value.starts_with('[') {
                heading.extend([roman(" "), italic(value), roman(dots)]);
            } else {
                heading.extend([roman(" ["), italic(value), roman(format!("]{dots}"))]);
            }
        }
        let mut roff = Roff::new();
        roff.control("TP", []);
        roff.text(heading);
        let about = sub.get_long_about().or_else(|| sub.get_about()).map(|s| s.to_string()).unwrap_or_default();
        for (i, paragraph) in about.split("\n\n").enumerate() {
            if i > 0 {
                roff.control("IP", []);
            }
            roff.text([roman(sentence(&paragraph.split_whitespace().collect::<Vec<_>>().join(" ")))]);
        }
        out.push_str(&roff_fragment(&roff));
        // Arguments, then options, each rendered by clap_mangen as a list
        // indented under the command.
        for args in [positionals, options] {
            if args.is_empty() {
                continue;
            }
            // Only the arguments are rendered, so the command's name is not shown.
            let listed = args.iter().fold(Command::new("args").disable_help_flag(true), |c, arg| c.arg((*arg).clone()));
            let list = render(|w| Man::new(listed).render_options_section(w).map_err(io))?;
            let list = list.strip_prefix(".SH OPTIONS\n").ok_or("unexpected clap_mangen output")?;
            out.push_str(".RS\n");
            out.push_str(list);
            out.push_str(".RE\n");
        }
    }
    Ok(out)
}

/// The subcommands a page documents: not the hidden ones (wharfd's
/// internal `launch`), nor clap's own `help`.
fn visible_subcommands(command: &Command) -> impl Iterator<Item = &Command> {
    command.get_subcommands().filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .map(|names| names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// Help texts as sentences, in the command and all its subcommands (after
/// clap has added its own `--help` and `--version`).
fn with_full_stops(command: Command) -> Command {
    command
        .mut_args(|arg| {
            let help = arg.get_help().map(|help| sentence(&help.to_string()));
            let long_help = arg.get_long_help().map(|help| sentence(&help.to_string()));
            let arg = if let Some(help) = help { arg.help(help) } else { arg };
            if let Some(help) = long_help { arg.long_help(help) } else { arg }
        })
        .mut_subcommands(with_full_stops)
}

/// clap drops the full stop of a one-sentence doc comment; prose has it.
fn sentence(text: &str) -> String {
    if text.is_empty() || text.ends_with(['.', '!', '?', ':']) { text.to_string() } else { format!("{text}.") }
}

/// A shipped profile's settings (its leading comment is what the page says
/// in prose), as an example block.
fn profile_block(name: &str) -> Result<String, String> {
    let (_, text) = PROFILES.iter().find(|(known, _)| *known == name).ok_or(format!("no shipped profile '{name}'"))?;
    let mut roff = Roff::new();
    roff.control("PP", []);
    roff.text([roman("As shipped, in "), italic(format!("/usr/lib/wharf/profiles/{name}/service.conf")), roman(":")]);
    roff.control("RS", ["4"]);
    roff.control("EX", []);
    for line in text.lines().skip_while(|line| line.starts_with('#')) {
        roff.text([roman(line)]);
    }
    roff.control("EE", []);
    roff.control("RE", []);
    Ok(roff_fragment(&roff))
}

fn built_in_schemas() -> Result<Vec<json_schema::CommandSchema>, String> {
    SCHEMAS
        .iter()
        .map(|(stem, text)| json_schema::parse(stem, text).map_err(|e| format!("man/json/{stem}.json: {e}")))
        .collect()
}

/// `@json`: for each command of the page's tool, in the order of COMMANDS,
/// what it prints with `--json`, from its schema; then the error document.
/// A command without a schema, or a schema of no command, is an error: the
/// page documents exactly the commands there are.
fn json_section(command: &Command, schemas: &[json_schema::CommandSchema]) -> Result<String, String> {
    let tool = command.get_name();
    let names: Vec<&str> = visible_subcommands(command).map(Command::get_name).collect();
    if let Some(stray) = schemas.iter().find(|s| s.tool == tool && !names.contains(&s.command.as_str())) {
        return Err(format!("man/json/{tool}-{}.json is the schema of no {tool} command", stray.command));
    }
    let mut out = String::new();
    let find = |tool: &str, name: &str| schemas.iter().find(|s| s.tool == tool && s.command == name);
    for name in names {
        let schema = find(tool, name).ok_or(format!("{tool} {name} has no schema (man/json/{tool}-{name}.json)"))?;
        out.push_str(&schema_entry(name, &schema.schema));
    }
    let error = find("", "error").ok_or("there is no man/json/error.json")?;
    out.push_str(&schema_entry("error", &error.schema));
    Ok(out)
}

/// One command's document: its heading, what it is, and its keys, nested
/// as the document nests them.
fn schema_entry(heading: &str, schema: &serde_json::Value) -> String {
    let mut roff = Roff::new();
    roff.control("SS", [heading]);
    let keys = keys_of(schema);
    let mut text = sentence(description(schema));
    if !is_interactive(schema) {
        let phrase = type_phrase(schema);
        let article = if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) { "An" } else { "A" };
        text.push_str(&format!(" {article} {phrase}{}", if keys.is_empty() { "." } else { ":" }));
    }
    roff.text([roman(text)]);
    let mut out = roff_fragment(&roff);
    out.push_str(&keys);
    out
}

fn is_interactive(schema: &serde_json::Value) -> bool {
    schema.get("interactive").and_then(serde_json::Value::as_bool).unwrap_or(false)
}

fn description(schema: &serde_json::Value) -> &str {
    schema.get("description").and_then(serde_json::Value::as_str).unwrap_or_default()
}

/// The keys `schema` describes: an object's, or those of the objects an
/// array holds or an object maps to, one tagged paragraph each; empty for
/// anything else.
fn keys_of(schema: &serde_json::Value) -> String {
    let Some(object) = innermost_object(schema) else {
        return String::new();
    };
    let required: Vec<&str> = object
        .get("required")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let mut out = String::new();
    let properties = object.get("properties").and_then(serde_json::Value::as_object);
    for (key, property) in properties.into_iter().flatten() {
        let mut phrase = type_phrase(property);
        if !required.contains(&key.as_str()) {
            phrase.push_str(", optional");
        }
        let mut roff = Roff::new();
        roff.control("TP", []);
        roff.text([italic(key.as_str()), roman(format!(" ({phrase})"))]);
        let mut text = vec![roman(sentence(description(property)))];
        if let Some(choices) = property.get("enum").and_then(serde_json::Value::as_array) {
            text.push(roman(" One of "));
            let choices: Vec<String> =
                choices.iter().map(|c| c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string())).collect();
            for (i, choice) in choices.iter().enumerate() {
                if i > 0 {
                    text.push(roman(if i + 1 == choices.len() { " or " } else { ", " }));
                }
                text.push(bold(choice.as_str()));
            }
            text.push(roman("."));
        }
        roff.text(text);
        out.push_str(&roff_fragment(&roff));
        let nested = keys_of(property);
        if !nested.is_empty() {
            out.push_str(".RS\n");
            out.push_str(&nested);
            out.push_str(".RE\n");
        }
    }
    // The keys an object has beside its named ones (machined's properties).
    if properties.is_some_and(|p| !p.is_empty())
        && let Some(other) = object.get("additionalProperties").filter(|a| a.is_object())
    {
        let mut roff = Roff::new();
        roff.control("TP", []);
        roff.text([roman("Other keys"), roman(format!(" ({}, optional)", type_phrase(other)))]);
        roff.text([roman(sentence(description(other)))]);
        out.push_str(&roff_fragment(&roff));
    }
    out
}

/// The object whose keys a value of `schema` has: itself, or what its
/// array holds, or (a map without named keys) its values, as deep as that goes.
fn innermost_object(schema: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    let types = json_schema::types(schema).unwrap_or_default();
    if types.contains(&"array") {
        return schema.get("items").and_then(innermost_object);
    }
    if !types.contains(&"object") {
        return None;
    }
    let object = schema.as_object()?;
    let named = object.get("properties").and_then(serde_json::Value::as_object).is_some_and(|p| !p.is_empty());
    match object.get("additionalProperties") {
        Some(values @ serde_json::Value::Object(_)) if !named => innermost_object(values),
        _ if named => Some(object),
        _ => None,
    }
}

/// What a value is, in words: `string`, `integer or null`, `array of
/// objects`, `object of arrays of strings`.
fn type_phrase(schema: &serde_json::Value) -> String {
    let types = json_schema::types(schema).unwrap_or_default();
    let mut words: Vec<String> = types.iter().filter(|t| **t != "null").map(|t| noun(schema, t, false)).collect();
    if words.is_empty() {
        words.push("value".to_string());
    }
    if types.contains(&"null") {
        words.push("null".to_string());
    }
    words.join(" or ")
}

/// A type's name for `schema`, in the plural for what an array holds.
fn noun(schema: &serde_json::Value, name: &str, plural: bool) -> String {
    let s = if plural { "s" } else { "" };
    let inner = |key: &str| {
        schema.get(key).filter(|v| v.is_object()).map(|inner| {
            let types = json_schema::types(inner).unwrap_or_default();
            types.first().map(|t| noun(inner, t, true)).unwrap_or_else(|| "values".to_string())
        })
    };
    let named = schema.get("properties").and_then(serde_json::Value::as_object).is_some_and(|p| !p.is_empty());
    match name {
        "array" => format!("array{s} of {}", inner("items").unwrap_or_else(|| "values".to_string())),
        "object" if !named => match inner("additionalProperties") {
            Some(values) => format!("object{s} of {values}"),
            None => format!("object{s}"),
        },
        "boolean" => format!("boolean{s}"),
        other => format!("{other}{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(stem: &str, value: serde_json::Value) -> json_schema::CommandSchema {
        json_schema::parse(stem, &value.to_string()).unwrap()
    }

    fn tool() -> Command {
        Command::new("tool").subcommand(Command::new("list")).subcommand(Command::new("login"))
    }

    fn error() -> json_schema::CommandSchema {
        schema(
            "error",
            json!({"type": "object", "description": "A failure", "required": ["error"], "additionalProperties": false,
                   "properties": {"error": {"type": "object", "description": "Its kind", "additionalProperties": false,
                                            "properties": {"kind": {"type": "string", "enum": ["a", "b", "c"], "description": "Which"}}}}}),
        )
    }

    fn list() -> serde_json::Value {
        json!({"type": "array", "description": "The images", "items": {
        "type": "object", "description": "An image", "required": ["name"], "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "description": "Its name"},
            "profile": {"type": ["string", "null"], "description": "Its profile"},
            "units": {"type": "array", "description": "Its units", "items": {"type": "string", "description": "A unit"}},
            "limits": {"type": "object", "description": "Its limits",
                       "additionalProperties": {"type": "string", "description": "A limit"}},
            "os": {"type": "object", "description": "Its OS", "additionalProperties": false,
                   "properties": {"id": {"type": "string", "description": "Its ID"}}}
        }}})
    }

    /// Each command under its own heading, each key with its type (and
    /// whether it may be missing), nested keys indented, enums listed.
    #[test]
    fn schemas_render_as_nested_key_lists() {
        let schemas = [
            schema("tool-list", list()),
            schema("tool-login", json!({"description": "No JSON: a terminal", "interactive": true})),
            error(),
        ];
        let page = json_section(&tool(), &schemas).unwrap();
        for expected in [
            ".SS list\nThe images. An array of objects:\n",
            ".TP\n\\fIname\\fR (string)\nIts name.\n",
            ".TP\n\\fIprofile\\fR (string or null, optional)\nIts profile.\n",
            ".TP\n\\fIunits\\fR (array of strings, optional)\n",
            ".TP\n\\fIlimits\\fR (object of strings, optional)\n",
            ".TP\n\\fIos\\fR (object, optional)\nIts OS.\n.RS\n.TP\n\\fIid\\fR (string, optional)\nIts ID.\n.RE\n",
            ".SS login\nNo JSON: a terminal.\n",
            ".SS error\nA failure. An object:\n",
            "Which. One of \\fBa\\fR, \\fBb\\fR or \\fBc\\fR.\n",
        ] {
            assert!(page.contains(expected), "{expected:?} not in:\n{page}");
        }
        assert!(page.find(".SS list").unwrap() < page.find(".SS login").unwrap());
    }

    #[test]
    fn every_command_has_exactly_one_schema() {
        let without_login = [schema("tool-list", list()), error()];
        assert_eq!(
            json_section(&tool(), &without_login).unwrap_err(),
            "tool login has no schema (man/json/tool-login.json)"
        );
        let stray = [
            schema("tool-list", list()),
            schema("tool-login", json!({"description": "x", "interactive": true})),
            schema("tool-gone", list()),
            error(),
        ];
        assert_eq!(
            json_section(&tool(), &stray).unwrap_err(),
            "man/json/tool-gone.json is the schema of no tool command"
        );
    }

    #[test]
    fn the_built_in_schemas_are_those_of_man_json() {
        let files: Vec<(String, String)> = json_schema::load_dir(&json_schema::schema_dir())
            .unwrap()
            .into_iter()
            .map(|s| (s.tool, s.command))
            .collect();
        let built_in: Vec<(String, String)> =
            built_in_schemas().unwrap().into_iter().map(|s| (s.tool, s.command)).collect();
        let sorted = |mut list: Vec<(String, String)>| {
            list.sort();
            list
        };
        assert_eq!(sorted(built_in), sorted(files), "SCHEMAS in contrib/gen.rs lists the files of man/json/");
    }

    /// The shipped pages: every command of both tools has its schema, and
    /// the pages render.
    #[test]
    fn the_pages_document_every_commands_json() {
        for page in PAGES {
            let text = render_page(page).unwrap_or_else(|e| panic!("{}: {e}", page.name));
            if page.name == "portable" || page.name == "machine" {
                assert!(text.contains(".SS list\n") && text.contains(".SS error\n"), "{}", page.name);
            }
        }
    }
}
