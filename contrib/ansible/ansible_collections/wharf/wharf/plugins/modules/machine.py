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
    image is told from its content (plain, xz or gzip compressed; a zstd file
    is told by its name).
  - Resource limits are set with C(machine set-property --save), so they apply
    at once to a running machine and are kept for every later start.
author: wharf authors (!UNKNOWN)
options:
  name:
    description: The machine's name, which is also its image's name in the pool (C(/var/lib/machines), ...).
    type: str
    required: true
  source:
    description:
      - A file on the target to import the image from when it is missing.
      - A tar archive becomes a directory image (C(machine import-tar)), anything
        else a raw image (C(machine import-raw)).
    type: path
  source_type:
    description: How to import O(source); V(auto) looks at its content.
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

import lzma
import os
import re
import zlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wharf.wharf.plugins.module_utils.wharf import Wharf, systemctl_show

CONFIG_DIR = "/etc/wharf/machines"
MEMORY = ("MemoryMax", "MemoryHigh", "MemoryLow", "MemorySwapMax")
LIMITS = MEMORY + ("CPUQuota", "CPUWeight", "TasksMax", "IOWeight", "AllowedCPUs")
SIZE_SHIFTS = {"K": 10, "M": 20, "G": 30, "T": 40, "B": 0}


def limit_name(key):
    for name in LIMITS:
        if name.lower() == key.strip().lower():
            return name
    raise ValueError("unknown limit '%s' (known: %s)" % (key, ", ".join(LIMITS)))


def cpu_set(text):
    cpus = set()
    for part in re.split(r"[, ]+", text.strip()):
        if not part:
            continue
        low, high = part.partition("-")[::2]
        low, high = int(low), int(high or low)
        if low > high:
            raise ValueError(part)
        cpus.update(range(low, high + 1))
    ranges, ordered = [], sorted(cpus)
    i = 0
    while i < len(ordered):
        start = ordered[i]
        while i + 1 < len(ordered) and ordered[i + 1] == ordered[i] + 1:
            i += 1
        ranges.append(str(start) if ordered[i] == start else "%d-%d" % (start, ordered[i]))
        i += 1
    return ",".join(ranges)


def canonical(name, value):
    """A limit's value as wharf shows and saves it (what `machine show`
    prints), so that given and current values compare: 512M -> 536870912."""
    text = str(value).strip()
    if text in ("infinity", "[not set]") or (text == "" and name == "AllowedCPUs"):
        return text
    try:
        if name in MEMORY:
            shift = SIZE_SHIFTS.get(text[-1:].upper())
            return str(int(text[:-1]) << shift) if shift is not None else str(int(text))
        if name == "CPUQuota":
            if not text.endswith("%") or int(text[:-1]) <= 0:
                raise ValueError(text)
            return "%d%%" % int(text[:-1])
        if name == "AllowedCPUs":
            return cpu_set(text)
        return str(int(text))
    except ValueError:
        raise ValueError("%s: '%s' is not a value wharf takes" % (name, value))


def saved_limits(name):
    """The limits kept in the machine's settings file, canonical."""
    path = os.path.join(CONFIG_DIR, name + ".toml")
    try:
        with open(path, "rb") as config:
            text = config.read().decode()
    except FileNotFoundError:
        return {}
    try:
        import tomllib

        table = tomllib.loads(text).get("limits", {})
    except ImportError:
        # Python before 3.11: the [limits] table is flat `Key = value` lines.
        table, section = {}, None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[] ")
            elif section == "limits" and "=" in line:
                key, value = line.partition("=")[::2]
                table[key.strip()] = value.strip().strip('"')
    limits = {}
    for key, value in table.items():
        try:
            limits[limit_name(key)] = canonical(limit_name(key), value)
        except ValueError:
            continue
    return limits


def sniff(path):
    """tar or raw, from the content of a plain, xz or gzip file."""
    with open(path, "rb") as source:
        head = source.read(1 << 16)
    try:
        if head.startswith(b"\xfd7zXZ\x00"):
            head = lzma.LZMADecompressor().decompress(head, 4096)
        elif head.startswith(b"\x1f\x8b"):
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4096)
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            # No zstd in Python's standard library: the name tells.
            return "tar" if ".tar" in os.path.basename(path) else "raw"
    except (lzma.LZMAError, zlib.error):
        return "raw"
    # POSIX and GNU tar headers carry "ustar" at offset 257.
    return "tar" if head[257:262] == b"ustar" else "raw"


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

    try:
        wanted = {limit_name(k): canonical(limit_name(k), v) for k, v in p["limits"].items()}
    except ValueError as e:
        module.fail_json(msg=str(e))

    images = cli.run(["list-images"])
    # A raw image is listed with its file name (f28.raw), a directory by its own.
    image = next((i["path"] for i in images or [] if i["name"] in (name, name + ".raw")), None)
    machines = cli.run(["list"])
    running = any(m["name"] == name for m in machines or [])
    boot_unit = "wharf-machine@%s.service" % name
    enabled = systemctl_show(module, [boot_unit], ["UnitFileState"])[boot_unit].get("UnitFileState", "")
    enabled = enabled.startswith("enabled")
    saved = saved_limits(name)
    live = {}
    if running:
        live = cli.run(["show", name])

    def view(image, running, enabled, saved, live):
        state = "absent" if image is None else "running" if running else "stopped"
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
        kind = p["source_type"] if p["source_type"] != "auto" else sniff(p["source"])
        result.update(changed=True, imported=True, source_type=kind)
        image = os.path.join("/var/lib/machines", name)
        if not check:
            done = cli.run(["import-" + kind, p["source"], name])
            image = done["path"]

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
