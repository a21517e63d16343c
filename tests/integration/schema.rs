//! `--json` of every command of `portable` and `machine`, on real images
//! and a real machine in the testbed, validated against the command's schema
//! in man/json/ (the one the man pages are made from), and every command of
//! both tools has one: a new command without a schema fails here. Failures
//! are validated against the error document's schema, the bad input each
//! command refuses among them.
//!
//! The images and the machine are the test's own (schemasvc_*, schemaf,
//! schema*), built from the images the other tests use, and removed at the
//! end; the trials are exclusive, as the other portable and machine ones.

#[path = "../../contrib/json_schema.rs"]
mod json_schema;

use std::collections::BTreeSet;
use std::sync::Arc;

use clap::CommandFactory;
use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::testbed::{Testbed, images};
use crate::{Shared, exclusive_trial};

pub fn trials(shared: &Arc<Shared>) -> Vec<Trial> {
    vec![
        Trial::test("schema::every_command_of_both_tools_has_a_schema", || {
            every_command_has_a_schema().map_err(Failed::from)
        }),
        exclusive_trial(shared, "schema::portable_commands_print_what_their_schemas_say", portable_documents),
        exclusive_trial(shared, "schema::machine_commands_print_what_their_schemas_say", machine_documents),
    ]
}

/// The commands of a tool, as clap parses them (not the hidden ones, nor `help`).
fn commands(tool: &str) -> Vec<String> {
    let command = match tool {
        "portable" => wharf::cli::portable::Cli::command(),
        _ => wharf::cli::machine::Cli::command(),
    };
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .map(|sub| sub.get_name().to_string())
        .collect()
}

fn schemas() -> Vec<json_schema::CommandSchema> {
    json_schema::load_dir(&json_schema::schema_dir()).unwrap_or_else(|e| panic!("the schemas: {e}"))
}

fn every_command_has_a_schema() -> Result<(), String> {
    let schemas = schemas();
    let mut problems = Vec::new();
    for tool in ["portable", "machine"] {
        let commands = commands(tool);
        for command in &commands {
            if !schemas.iter().any(|s| s.tool == tool && &s.command == command) {
                problems.push(format!("{tool} {command} has no schema: write man/json/{tool}-{command}.json"));
            }
        }
        for schema in schemas.iter().filter(|s| s.tool == tool && !commands.contains(&s.command)) {
            problems.push(format!("man/json/{tool}-{}.json is the schema of no {tool} command", schema.command));
        }
    }
    // Only a command that takes a terminal may print no JSON.
    for schema in schemas.iter().filter(|s| s.is_interactive()) {
        if !["login", "shell"].contains(&schema.command.as_str()) {
            problems.push(format!(
                "{} {} is not interactive, yet its schema says it prints no JSON",
                schema.tool, schema.command
            ));
        }
    }
    if !schemas.iter().any(|s| s.command == "error" && s.tool.is_empty()) {
        problems.push("there is no man/json/error.json".to_string());
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// What a command is expected to end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exit 0 and the command's document.
    Ok,
    /// This exit status, and still the command's document (is-attached of
    /// a detached image, apply --check with changes, a command on several
    /// machines one of which failed).
    Status(i32),
    /// A non-zero exit and the error document, whose message is the line
    /// on standard error.
    Fails,
    /// Either, as the host allows (set-limit: only on btrfs).
    Either,
}

/// Runs commands, validates what they print, and collects every problem,
/// each naming the command and the offending key.
struct Checker<'a> {
    tb: &'a Testbed,
    tool: &'static str,
    schemas: Vec<json_schema::CommandSchema>,
    ran: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    fn new(tb: &'a Testbed, tool: &'static str) -> Self {
        Checker { tb, tool, schemas: schemas(), ran: BTreeSet::new(), problems: Vec::new() }
    }

    fn schema(&self, tool: &str, command: &str) -> Option<&Value> {
        self.schemas.iter().find(|s| s.tool == tool && s.command == command).map(|s| &s.schema)
    }

    /// Runs `args` (after `TOOL --json`) as `command` of the tool, and
    /// returns its document.
    #[track_caller]
    fn run(&mut self, command: &str, args: &str, expect: Expect) -> Value {
        self.ran.insert(command.to_string());
        let script = format!("{} --json {args}", self.tool);
        let out = self.tb.sh(&script);
        let document: Value = match serde_json::from_str(out.stdout.trim_end()) {
            Ok(document) if out.stdout.trim_end().lines().count() == 1 => document,
            Ok(_) => {
                self.problems.push(format!("{script}: the document is not on one line:\n{out}"));
                return Value::Null;
            }
            Err(e) => {
                self.problems.push(format!("{script}: stdout is not one JSON document ({e}):\n{out}"));
                return Value::Null;
            }
        };
        let code = out.code.unwrap_or(-1);
        let is_error = document.get("error").is_some() && document.as_object().is_some_and(|o| o.len() == 1);
        let wanted = match expect {
            Expect::Ok => (code == 0).then_some(false),
            Expect::Status(status) => (code == status).then_some(false),
            Expect::Fails => (code != 0).then_some(true),
            Expect::Either => Some(code != 0),
        };
        let Some(error) = wanted else {
            self.problems.push(format!("{script}: expected {expect:?}:\n{out}"));
            return document;
        };
        if error != is_error {
            self.problems.push(format!("{script}: expected {expect:?}, the document is {}:\n{out}", short(&document)));
            return document;
        }
        let (tool, name) = if error { ("", "error") } else { (self.tool, command) };
        let Some(schema) = self.schema(tool, name) else {
            self.problems.push(format!("{} {command}: there is no schema to check its document against", self.tool));
            return document;
        };
        let problems = json_schema::validate(schema, &document, "$");
        let what = if error { "the error document" } else { "its document" };
        for problem in problems {
            self.problems.push(format!("{} {command} ({script}), {what}: {problem}", self.tool));
        }
        if error {
            let message = document["error"]["message"].as_str().unwrap_or_default();
            if !out.stderr.lines().any(|line| line == format!("{}: {message}", self.tool)) {
                self.problems.push(format!("{script}: the error's message is not the line on stderr:\n{out}"));
            }
        }
        document
    }

    /// Every command of the tool ran (but the interactive ones), and no
    /// document departed from its schema.
    #[track_caller]
    fn finish(self) {
        let mut problems = self.problems;
        for command in commands(self.tool) {
            let interactive =
                self.schemas.iter().any(|s| s.tool == self.tool && s.command == command && s.is_interactive());
            if !interactive && !self.ran.contains(&command) {
                problems.push(format!("{} {command}: the test does not run it", self.tool));
            }
        }
        assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 200 { format!("{}...", text.chars().take(200).collect::<String>()) } else { text }
}

/// Serves `dir` of the testbed over HTTP on 127.0.0.1:`port` in a unit of
/// its own, for the pulls, once it answers.
fn serve(tb: &Testbed, unit: &str, dir: &str, port: u16, probe: &str) {
    tb.ok(&format!(
        "systemd-run --unit={unit} -p WorkingDirectory={dir} python3 -m http.server --bind 127.0.0.1 {port}"
    ));
    tb.ok(&format!(
        "for i in $(seq 300); do python3 -c 'import urllib.request, sys; urllib.request.urlopen(sys.argv[1])' \
         http://127.0.0.1:{port}/{probe} >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"
    ));
}

const PORTABLE_SERVER: &str = "http://127.0.0.1:8652";

/// What an earlier, failed run of the portable trial may have left.
fn portable_cleanup(tb: &Testbed) {
    tb.ok("systemctl stop wharf-schema-httpd 2>/dev/null; systemctl reset-failed wharf-schema-httpd 2>/dev/null; \
           portable detach --now schemasvc_1.raw >/dev/null 2>&1; \
           rm -rf /var/lib/portables/schemasvc_* /var/lib/portables/schemapull_* /srv/schema; true");
}

/// Runs `cleanup` when dropped: at the end of a trial, also one that failed.
struct Cleanup<'a>(&'a Testbed, fn(&Testbed));

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

fn portable_documents(tb: &Testbed) {
    portable_cleanup(tb);
    let _cleanup = Cleanup(tb, portable_cleanup);
    let tree = tb.host_path("/srv/schema/schemasvc");
    images::foobar_as(&tree, "schemasvc", "foobar-hello.service").unwrap();
    for image in
        ["/var/lib/portables/schemasvc_1.raw", "/var/lib/portables/schemasvc_9.raw", "/srv/schema/www/schemapull_1.raw"]
    {
        std::fs::create_dir_all(tb.host_path(image).parent().unwrap()).unwrap();
        images::squashfs(&tree, &tb.host_path(image)).unwrap();
    }
    let since = tb.ok("date +%s").trim().to_string();
    let mut c = Checker::new(tb, "portable");

    let listed = c.run("list", "list", Expect::Ok);
    let image = listed.as_array().into_iter().flatten().find(|i| i["name"] == "schemasvc_1.raw");
    assert_eq!(image.map(|i| i["path"].clone()), Some("/var/lib/portables/schemasvc_1.raw".into()), "{listed}");
    let pretty: Value = serde_json::from_str(&tb.ok("portable --json=pretty list")).unwrap();
    assert_eq!(pretty, listed, "--json=pretty gives the same document");
    c.run("inspect", "inspect schemasvc_1.raw", Expect::Ok);
    let inspected = c.run("inspect", "inspect --cat /srv/schema/schemasvc", Expect::Ok);
    assert_eq!(inspected["os_release"]["PORTABLE_PREFIXES"], "schemasvc", "{inspected}");
    c.run("inspect", "inspect /srv/schema/nothing.raw", Expect::Fails);
    c.run("is-attached", "is-attached schemasvc_1.raw", Expect::Status(1));

    std::fs::write(
        tb.host_path("/srv/schema/fleet.toml"),
        "[[portable]]\nimage = \"/var/lib/portables/schemasvc_1.raw\"\nprofile = \"default\"\n",
    )
    .unwrap();
    let plan = c.run("apply", "apply --check /srv/schema/fleet.toml", Expect::Status(2));
    assert_eq!(plan["applied"], false, "{plan}");
    c.run("apply", "apply --check /srv/schema/nothing.toml", Expect::Fails);

    c.run("attach", "attach --check --now schemasvc_1.raw", Expect::Ok);
    let attached = c.run("attach", "attach --now schemasvc_1.raw", Expect::Ok);
    assert_eq!(attached["units"], serde_json::json!(["schemasvc.service"]), "{attached}");
    c.run("attach", "attach --profile=nonesuch schemasvc_9.raw", Expect::Fails);
    // The same image is named the same way in list, inspect, is-attached and read-only.
    let status = c.run("is-attached", "is-attached schemasvc_1.raw", Expect::Ok);
    assert_eq!((&status["name"], &status["path"]), (&image.unwrap()["name"], &image.unwrap()["path"]), "{status}");
    c.run("reattach", "reattach --check --profile=trusted schemasvc_1.raw", Expect::Ok);
    c.run("reattach", "reattach --profile=trusted schemasvc_1.raw", Expect::Ok);
    c.run("reattach", "reattach /srv/schema/nothing.raw", Expect::Fails);

    c.run("set-limit", "set-limit schemasvc_9.raw 10G", Expect::Either);
    c.run("set-limit", "set-limit lots", Expect::Fails);
    let marked = c.run("read-only", "read-only schemasvc_9.raw", Expect::Ok);
    assert_eq!((&marked["name"], &marked["read_only"]), (&"schemasvc_9.raw".into(), &true.into()), "{marked}");
    c.run("remove", "remove schemasvc_9.raw", Expect::Fails);
    c.run("read-only", "read-only schemasvc_9.raw no", Expect::Ok);
    let removed = c.run("remove", "-q remove schemasvc_9.raw", Expect::Ok);
    assert_eq!(removed, serde_json::json!(["/var/lib/portables/schemasvc_9.raw"]), "--quiet leaves the document");

    serve(tb, "wharf-schema-httpd", "/srv/schema/www", 8652, "schemapull_1.raw");
    c.run("pull", &format!("pull --verify=no {PORTABLE_SERVER}/schemapull_1.raw"), Expect::Ok);
    c.run("pull", &format!("pull --verify=no {PORTABLE_SERVER}/missing_1.raw"), Expect::Fails);
    tb.ok("systemctl stop wharf-schema-httpd && portable remove schemapull_1.raw");
    // No registry answers there: the error document (a pull that works is
    // the OCI trial's).
    c.run("pull-oci", "pull-oci 127.0.0.1:9/none/app:v1 schemaoci", Expect::Fails);

    c.run("detach", "detach --check --now schemasvc_1.raw", Expect::Ok);
    c.run("detach", "detach --now schemasvc_1.raw", Expect::Ok);
    c.run("detach", "detach schemasvc_1.raw", Expect::Fails);
    c.run("history", &format!("history --since=@{since} schemasvc_1.raw"), Expect::Ok);
    c.run("history", "history --since=yesterday-ish", Expect::Fails);
    c.run("remove", "remove schemasvc_1.raw", Expect::Ok);
    c.finish();
}

const MACHINE_SERVER: &str = "http://127.0.0.1:8653";

/// What an earlier, failed run of the machine trial may have left.
fn machine_cleanup(tb: &Testbed) {
    tb.ok("systemctl stop wharf-schema-mhttpd 2>/dev/null; systemctl reset-failed wharf-schema-mhttpd 2>/dev/null; \
           machine terminate schemaf >/dev/null 2>&1; systemctl reset-failed wharf-schemaf 2>/dev/null; \
           machine disable schemaf >/dev/null 2>&1; machine disable schemanone >/dev/null 2>&1; \
           for i in schemaf schemafs schemafs2 schematar schemaraw schemaany schemapr schemapt; do \
             machine read-only $i no >/dev/null 2>&1; machine remove $i >/dev/null 2>&1; done; \
           rm -rf /srv/schema-m; true");
}

/// Waits until `machine`'s unit was restarted `restarts` times and is active.
fn wait_restarted(tb: &Testbed, unit: &str, restarts: u32) {
    tb.ok(&format!(
        "for i in $(seq 300); do [ \"$(systemctl show -p NRestarts --value {unit})\" = {restarts} ] && \
         [ \"$(systemctl show -p ActiveState --value {unit})\" = active ] && \
         machinectl show schemaf -p State --value 2>/dev/null | grep -qx running && exit 0; sleep 0.1; done; exit 1"
    ));
}

fn machine_documents(tb: &Testbed) {
    crate::machine::prepare(tb);
    machine_cleanup(tb);
    let _cleanup = Cleanup(tb, machine_cleanup);
    let tree = tb.host_path("/srv/schema-m/tree");
    images::foobar(&tree, "dir", "1").unwrap();
    images::squashfs(&tree, &tb.host_path("/srv/schema-m/tree.raw")).unwrap();
    tb.ok(
        "cd /srv/schema-m && tar --numeric-owner -C tree -cf tree.tar . && mkdir www && cp tree.raw www/schemapr.raw \
           && cp tree.tar www/schemapt.tar && echo note > note.txt && mkdir bind",
    );
    let mut c = Checker::new(tb, "machine");

    c.run("clone", "clone f28 schemaf", Expect::Ok);
    c.run("clone", "clone f28 'bad name'", Expect::Fails);
    c.run("import-fs", "import-fs /srv/schema-m/tree schemafs", Expect::Ok);
    c.run("import-tar", "import-tar /srv/schema-m/tree.tar schematar", Expect::Ok);
    c.run("import-tar", "import-tar /srv/schema-m/tree.raw schemanot", Expect::Fails);
    c.run("import-raw", "import-raw /srv/schema-m/tree.raw schemaraw", Expect::Ok);
    c.run("import", "import /srv/schema-m/tree.tar schemaany", Expect::Ok);
    c.run("import", "import /srv/schema-m/note.txt schemanot", Expect::Fails);
    let listed = c.run("list-images", "list-images", Expect::Ok);
    let image = listed.as_array().into_iter().flatten().find(|i| i["name"] == "schemafs").cloned();
    c.run("list-images", "list-images --all", Expect::Ok);
    c.run("show-image", "show-image schemaf", Expect::Ok);
    c.run("show-image", "show-image schemanone", Expect::Fails);
    c.run("image-status", "image-status schemaf schemafs", Expect::Ok);
    c.run("export-tar", "export-tar schematar /srv/schema-m/out.tar", Expect::Ok);
    c.run("export-raw", "export-raw schemaraw /srv/schema-m/out.raw", Expect::Ok);
    c.run("export-raw", "export-raw schemanone /srv/schema-m/none.raw", Expect::Fails);

    let marked = c.run("read-only", "read-only schemafs", Expect::Ok);
    let named = |v: &Value| (v["name"].clone(), v["path"].clone());
    assert_eq!(Some(named(&marked)), image.as_ref().map(named), "read-only names the image as list-images does");
    c.run("remove", "remove schemafs", Expect::Fails);
    c.run("read-only", "read-only schemafs no", Expect::Ok);
    c.run("rename", "rename schemafs schemafs2", Expect::Ok);
    c.run("rename", "rename schemanone schemanone2", Expect::Fails);
    c.run("remove", "-q remove schemafs2 schematar schemaraw schemaany", Expect::Ok);
    c.run("set-limit", "set-limit schemaf 10G", Expect::Either);
    c.run("set-limit", "set-limit schemaf lots", Expect::Fails);

    serve(tb, "wharf-schema-mhttpd", "/srv/schema-m/www", 8653, "schemapr.raw");
    c.run("pull-raw", &format!("pull-raw --verify=no {MACHINE_SERVER}/schemapr.raw"), Expect::Ok);
    c.run("pull-tar", &format!("pull-tar --verify=no {MACHINE_SERVER}/schemapt.tar"), Expect::Ok);
    c.run("pull-tar", &format!("pull-tar --verify=no {MACHINE_SERVER}/missing.tar"), Expect::Fails);
    c.run("pull-oci", "pull-oci 127.0.0.1:9/none/app:v1 schemaoci", Expect::Fails);
    tb.ok("systemctl stop wharf-schema-mhttpd && machine remove schemapr schemapt");
    c.run("list-transfers", "list-transfers", Expect::Ok);
    c.run("cancel-transfer", "cancel-transfer 4242", Expect::Fails);
    c.run("clean", "clean", Expect::Ok);
    c.run("history", "history schemaf", Expect::Ok);
    c.run("apply", "apply --check /srv/schema-m/nothing.toml", Expect::Fails);
    // A missing image of a fleet is imported: a change pending.
    std::fs::write(
        tb.host_path("/srv/schema-m/fleet.toml"),
        "[[machine]]\nname = \"schemaf2\"\nsource = \"/srv/schema-m/tree.tar\"\n",
    )
    .unwrap();
    let plan = c.run("apply", "apply --check /srv/schema-m/fleet.toml", Expect::Status(2));
    assert_eq!(plan["applied"], false, "{plan}");

    let started = c.run("start", "start schemaf", Expect::Ok);
    assert_eq!(started[0]["ready"], true, "{started}");
    let again = c.run("start", "start schemaf", Expect::Ok);
    assert_eq!(again[0]["already_running"], true, "{again}");
    let partly = c.run("start", "start schemaf schemanone", Expect::Status(1));
    assert!(partly[1]["error"]["kind"].is_string() && partly[0].get("error").is_none(), "{partly}");
    c.run("list", "list", Expect::Ok);
    c.run("list", "list --all", Expect::Ok);
    c.run("status", "status schemaf", Expect::Ok);
    c.run("status", "status schemanone", Expect::Fails);
    c.run("set-property", "set-property --check schemaf MemoryMax=256M", Expect::Ok);
    let set = c.run("set-property", "set-property schemaf TasksMax=300", Expect::Ok);
    c.run("set-property", "set-property schemaf NoSuchLimit=1", Expect::Fails);
    let shown = c.run("show", "show schemaf", Expect::Ok);
    // Limits are one shape in status, show and set-property.
    assert_eq!(set["limits"]["TasksMax"], "300", "{set}");
    let status = c.run("status", "status -n 0 schemaf", Expect::Ok);
    assert_eq!(shown["Limits"], status["limits"], "show's Limits are status's limits");
    assert_eq!(shown["Limits"]["TasksMax"], shown["TasksMax"], "{shown}");
    assert!(status["limits"]["TasksMax"].is_string(), "{status}");
    c.run("show", "show -p Name,Leader schemaf", Expect::Ok);
    c.run("show", "show -p NoSuchProperty schemaf", Expect::Fails);
    c.run("enable", "enable schemaf", Expect::Ok);
    c.run("disable", "disable schemaf", Expect::Ok);
    c.run("enable", "enable 'bad name'", Expect::Fails);
    c.run("bind", "bind --mkdir schemaf /srv/schema-m/bind /mnt/schema", Expect::Ok);
    c.run("bind", "bind schemaf /srv/schema-m/none /mnt/none", Expect::Fails);
    c.run("copy-to", "copy-to schemaf /srv/schema-m/note.txt /root/schema-note.txt", Expect::Ok);
    c.run("copy-from", "copy-from schemaf /root/schema-note.txt /srv/schema-m/note-back.txt", Expect::Ok);
    c.run("copy-from", "copy-from schemaf /root/schema-none.txt /srv/schema-m/none.txt", Expect::Fails);
    c.run("kill", "kill --signal=SIGCONT --kill-whom=leader schemaf", Expect::Ok);
    c.run("kill", "kill --signal=SIGNOPE schemaf", Expect::Fails);
    let restarts: u32 = tb.ok("systemctl show -p NRestarts --value wharf-schemaf").trim().parse().unwrap();
    c.run("reboot", "reboot schemaf", Expect::Ok);
    wait_restarted(tb, "wharf-schemaf", restarts + 1);
    let off = c.run("poweroff", "poweroff schemaf schemanone", Expect::Status(1));
    assert!(off[0].get("error").is_none() && off[1]["error"]["kind"].is_string(), "{off}");
    // Alone, a machine that is not running is still a record of its own:
    // the document has the same shape for one machine as for several.
    let off = c.run("poweroff", "poweroff schemaf", Expect::Status(1));
    assert!(off[0]["error"]["message"].as_str().is_some_and(|m| m.contains("schemaf")), "{off}");
    c.run("start", "start --no-block schemaf", Expect::Ok);
    // terminate is of a registered machine.
    tb.ok(
        "for i in $(seq 300); do machinectl show schemaf -p State --value >/dev/null 2>&1 && exit 0; sleep 0.1; done; \
           exit 1",
    );
    c.run("terminate", "terminate schemaf", Expect::Ok);
    c.run("terminate", "terminate schemaf", Expect::Status(1));
    c.run("reboot", "reboot schemaf", Expect::Status(1));
    c.run("remove", "remove schemaf", Expect::Ok);
    c.finish();
}
