# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: machine
short_description: Import, start, stop and remove machines with wharf
version_added: 0.1.0
description:
  - Manages one machine (an OS image booted as a container, registered with
    systemd-machined) with wharf's C(machine) tool, as C(machinectl) would.
  - The image is imported from O(source) when the machine pool has none of
    that name; whether O(source) is a tar archive or a raw disk or file system
    image is told by wharf from its content (plain, xz, gzip or zstd compressed).
  - Resource limits are set with C(machine set-property --save), so they apply
    at once to a running machine and are kept for every later start.
author: wharf authors (!UNKNOWN)
extends_documentation_fragment:
  - wharf.wharf.attributes
options:
  name:
    description: The machine's name, which is also its image's name in the pool (C(/var/lib/machines), ...).
    type: str
    required: true
  source:
    description:
      - A file on the target to import the image from when it is missing.
      - A tar archive becomes a directory image, anything else a raw image
        (C(machine import), which tells them apart by content).
    type: path
  source_type:
    description: How to import O(source) (C(machine import-tar) or C(import-raw)); V(auto) lets wharf look at its content.
    type: str
    choices: [auto, tar, raw]
    default: auto
  state:
    description:
      - V(present) makes sure the image is there (imported if need be) and
        leaves the machine running or not.
      - V(started) also boots it; V(stopped) powers it off.
      - V(absent) powers it off, disables it and removes its image.
    type: str
    choices: [present, started, stopped, absent]
    default: present
  enabled:
    description: Whether the machine starts at boot (C(machine enable)). Left as it is when not given.
    type: bool
  limits:
    description:
      - Resource limits as C(systemctl set-property) spells them, for example
        C(MemoryMax=512M), C(CPUQuota=50%) or C(TasksMax=200), as a dictionary.
      - Known limits are MemoryMax, MemoryHigh, MemoryLow, MemorySwapMax,
        CPUQuota, CPUWeight, TasksMax, IOWeight and AllowedCPUs. Limits not
        given are left as they are.
    type: dict
    default: {}
  timeout:
    description: Seconds to wait for a starting machine's init to report ready.
    type: int
    default: 60
notes:
  - Check mode and diff mode are supported; C(changed) is true only when the
    image, the machine's running state, its enablement or a limit changed.
  - The settings file C(/etc/wharf/machines/NAME.toml) that keeps the limits
    stays when the image is removed.
requirements:
  - wharf (the C(machine) tool and C(wharfd)) on the target, run as root.
"""

EXAMPLES = r"""
- name: Import f28 if need be, and run it with at most 512 MiB
  wharf.wharf.machine:
    name: f28
    source: /srv/images/f28.tar.xz
    state: started
    enabled: true
    limits:
      MemoryMax: 512M
      TasksMax: 200

- name: Power it off
  wharf.wharf.machine:
    name: f28
    state: stopped

- name: Remove it and its image
  wharf.wharf.machine:
    name: f28
    state: absent
"""

RETURN = r"""
name:
  description: The machine's name.
  returned: always
  type: str
  sample: f28
image:
  description: The image's path, or null when it is gone.
  returned: always
  type: str
  sample: /var/lib/machines/f28
imported:
  description: Whether the image was imported from O(source) (would be, in check mode).
  returned: always
  type: bool
source_type:
  description:
    - How the image was imported, V(tar) (a directory image) or V(raw).
    - "In check mode with O(source_type=auto), V(auto): wharf reads the file only when it imports it."
  returned: when the image was imported (or would be)
  type: str
  sample: tar
state:
  description: The machine afterwards, V(running), V(stopped) or V(absent).
  returned: always
  type: str
  sample: running
enabled:
  description: Whether the machine starts at boot, afterwards.
  returned: always
  type: bool
limits:
  description: The given limits as wharf keeps them (sizes in bytes, CPUQuota in percent).
  returned: always
  type: dict
  sample: {MemoryMax: "536870912"}
unit:
  description: The machine's unit, when it was started.
  returned: when the machine was started
  type: str
  sample: wharf-f28.service
ready:
  description: Whether its init reported ready within O(timeout), when it was started.
  returned: when the machine was started
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wharf.wharf.plugins.module_utils.wharf import Wharf, require


def error_kind(doc):
    """The kind of a wharf error printed with --json (no-such-image, ...)."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return doc["error"].get("kind")
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            source=dict(type="path"),
            source_type=dict(type="str", default="auto", choices=["auto", "tar", "raw"]),
            state=dict(type="str", default="present", choices=["present", "started", "stopped", "absent"]),
            enabled=dict(type="bool"),
            limits=dict(type="dict", default={}),
            timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name, check = p["name"], module.check_mode
    cli = Wharf(module, "machine")

    # wharf's own reading of the limits: canonical values, or its refusal.
    wanted = {}
    if p["limits"]:
        assignments = ["%s=%s" % (k, v) for k, v in sorted(p["limits"].items())]
        planned = cli.run(["set-property", "--check", "--save", name] + assignments)
        wanted = require(module, planned, ("limits",), "machine set-property --check --json")["limits"]

    # The image and what wharf keeps for it (its saved limits, whether it boots).
    rc, found, error = cli.try_run(["image-status", name])
    if rc == 0:
        found = require(module, (found or [None])[0], ("Path", "SavedLimits", "Enabled"), "machine image-status --json")
        image, saved, enabled = found["Path"], found["SavedLimits"], bool(found["Enabled"])
    elif error_kind(found) == "no-such-image":
        image, saved, enabled = None, {}, False
    else:
        cli.fail(["image-status", name], rc, "", error)
    machines = cli.run(["list"]) or []
    running = any(m.get("name") == name for m in machines)
    live = cli.run(["show", name]) if running else {}
    if image is None and running:
        # Running from an image elsewhere (nspawn's own): what wharf keeps is still its.
        enabled = bool(live.get("Enabled"))
        saved = live.get("SavedLimits", {})

    def view(image, running, enabled, saved, live):
        state = "absent" if image is None and not running else "running" if running else "stopped"
        shown = {"image": image, "state": state, "enabled": enabled, "limits": {k: saved.get(k) for k in wanted}}
        if running:
            shown["live_limits"] = {k: live.get(k) for k in wanted}
        return shown

    before = view(image, running, enabled, saved, live)
    result = dict(changed=False, name=name, imported=False)

    if p["state"] == "absent":
        if image is not None or running:
            result["changed"] = True
            if not check:
                if running:
                    cli.run(["poweroff", name])
                if enabled:
                    cli.run(["disable", name])
                if image is not None:
                    cli.run(["remove", name])
        result.update(image=None, state="absent", enabled=False, limits={k: saved.get(k) for k in wanted})
        finish(module, result, before, view(None, False, False, saved, {}))

    if image is None:
        if not p["source"]:
            module.fail_json(msg="machine image '%s' is not in the pool and no source is given to import it" % name)
        if not os.path.isfile(p["source"]):
            module.fail_json(msg="source %s: no such file" % p["source"])
        verb = "import" if p["source_type"] == "auto" else "import-" + p["source_type"]
        result.update(changed=True, imported=True, source_type=p["source_type"])
        image = "/var/lib/machines/%s (to be imported)" % name
        if not check:
            done = require(module, cli.run([verb, p["source"], name]), ("path",), "machine %s --json" % verb)
            image = done["path"]
            # What wharf made of it: a raw image is a file, a tar archive a directory.
            result["source_type"] = "tar" if os.path.isdir(image) else "raw"

    if p["enabled"] is not None and p["enabled"] != enabled:
        result["changed"] = True
        enabled = p["enabled"]
        if not check:
            cli.run(["enable" if enabled else "disable", name])

    stays_running = running and p["state"] != "stopped"
    differ = {k: v for k, v in wanted.items() if saved.get(k) != v or (stays_running and live.get(k) != v)}
    if differ:
        result["changed"] = True
        if not check:
            # Live on a running machine, and kept for later starts either way.
            cli.run(["set-property", "--save", name] + ["%s=%s" % item for item in sorted(differ.items())])
        saved = dict(saved, **differ)
        if stays_running:
            live = dict(live, **differ)

    if p["state"] == "started" and not running:
        result["changed"] = True
        running, live = True, dict(wanted)
        if not check:
            started = cli.run(["start", "--timeout", str(p["timeout"]), name])
            # One document: a record per machine named (older wharf printed the record itself).
            started = (started or [None])[0] if isinstance(started, list) else started
            started = require(module, started, ("unit", "ready"), "machine start --json")
            result.update(unit=started["unit"], ready=started["ready"])
            if not started["ready"]:
                module.warn("machine %s started, but its init did not report ready within %ds" % (name, p["timeout"]))
            live = cli.run(["show", name])
    elif p["state"] == "stopped" and running:
        result["changed"] = True
        running = False
        if not check:
            cli.run(["poweroff", name])

    after = view(image, running, enabled, saved, live)
    result.update(image=image, state=after["state"], enabled=enabled, limits=after["limits"])
    finish(module, result, before, after)


def finish(module, result, before, after):
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
