# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: portable
short_description: Attach, reattach or detach a portable service image with wharf
version_added: 0.1.0
description:
  - Brings one portable service image to a state with wharf's C(portable) tool,
    the way C(portablectl) would. V(attached) puts its units on the host with a
    sandbox profile, V(running) also starts its services, V(detached) takes them away.
  - When another version of the same image is attached (an image with the same
    name prefix, such as C(foobar_1.raw) for C(foobar_2.raw), or one holding the
    same units), V(attached) and V(running) replace it with C(portable reattach),
    which restarts what ran and puts the old version back if the new one fails
    to start.
  - Every change goes through C(portable --json); unit files are never written
    by this module. Enabling, starting and stopping units that are already
    attached is done with C(systemctl), as for any other unit.
author: wharf authors (!UNKNOWN)
options:
  image:
    description:
      - The image, as an absolute path or a name in the portable search path
        (C(/etc/portables), C(/var/lib/portables), ...).
    type: str
    required: true
  state:
    description:
      - V(attached) attaches the image (or reattaches it in place of another
        version) and leaves its services as they are.
      - V(running) also starts its services, that is every unit that is not a
        template, except oneshot services that do not remain after exit (those are tasks).
      - V(detached) stops, disables and detaches it.
    type: str
    choices: [attached, detached, running]
    default: attached
  profile:
    description: The sandbox profile (default, nonetwork, strict, trusted, or one under /etc/wharf/profiles).
    type: str
    default: default
  enabled:
    description:
      - Whether the image's units that have an C([Install]) section are enabled.
      - Left as it is when not given.
    type: bool
  runtime:
    description: Attach below /run (gone at the next boot) instead of /etc.
    type: bool
    default: false
  prefixes:
    description: Unit name prefixes to attach instead of the image's own.
    type: list
    elements: str
    default: []
notes:
  - Check mode and diff mode are supported. In diff mode the file changes are
    the ones wharf reports; in check mode, where wharf changes nothing, they are
    predicted per unit (the unit file and its drop-in directory).
  - C(changed) is true only when a unit file or a unit's state changed.
requirements:
  - wharf (the C(portable) tool and C(wharfd)) on the target, run as root.
"""

EXAMPLES = r"""
- name: Run version 2 of foobar, replacing whatever version runs now
  wharf.wharf.portable:
    image: /srv/images/foobar_2.raw
    state: running
    enabled: true

- name: Attach with a stricter sandbox, below /run
  wharf.wharf.portable:
    image: foobar_2.raw
    profile: strict
    runtime: true

- name: Take it off the host
  wharf.wharf.portable:
    image: /srv/images/foobar_2.raw
    state: detached
"""

RETURN = r"""
image:
  description: The image's absolute path, as wharf knows it.
  returned: when the image was found
  type: str
  sample: /srv/images/foobar_2.raw
action:
  description: What happened to the image's files (V(none), V(attach), V(reattach), V(refresh), V(detach)).
  returned: always
  type: str
  sample: reattach
replaced:
  description: The other version that V(reattach) replaced.
  returned: when another version was attached
  type: str
  sample: /srv/images/foobar_1.raw
state:
  description: wharf's state of the image afterwards (detached, attached, enabled, running, and their -runtime forms).
  returned: always
  type: str
  sample: running
units:
  description: The image's units on the host.
  returned: always
  type: list
  elements: str
  sample: [foobar-hello.service, foobar.service]
changes:
  description:
    - The file changes, as C(portable --json) reports them (kind, path, source).
    - In check mode, the predicted ones (kind V(attach) or V(detach), per unit).
  returned: always
  type: list
  elements: dict
started:
  description: Units started (or restarted by a reattach).
  returned: always
  type: list
  elements: str
stopped:
  description: Units stopped.
  returned: always
  type: list
  elements: str
enabled_units:
  description: Units enabled.
  returned: always
  type: list
  elements: str
disabled_units:
  description: Units disabled.
  returned: always
  type: list
  elements: str
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wharf.wharf.plugins.module_utils.wharf import Wharf, systemctl, systemctl_show

# Where wharf finds sandbox profiles, earlier ones first.
PROFILE_DIRS = ("/etc/wharf/profiles", "/run/wharf/profiles", "/usr/lib/wharf/profiles")
PORTABLE_DROPIN = "20-portable.conf"
PROFILE_DROPIN = "10-profile.conf"
MARKER_HEAD = "# Drop-in created by wharf for image '"
MARKER_TAIL = "', do not edit."
SHOWN = ("LoadState", "ActiveState", "UnitFileState", "DropInPaths", "FragmentPath")


def name_prefix(path):
    """wharf's default unit prefix of an image: its file name without .raw or
    .raw.xz, up to the first '_' (foobar_2.raw -> foobar)."""
    name = os.path.basename(path.rstrip("/"))
    for suffix in (".raw.xz", ".raw"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    head, sep = name.partition("_")[:2]
    return head if sep and head else name


def setting(contents, key):
    """The last value of `key=` in a unit file, lower-cased."""
    value = None
    for line in contents.splitlines():
        line = line.strip()
        if line.startswith(key + "="):
            value = line[len(key) + 1 :].strip().lower()
    return value


def stays_up(unit):
    """Whether a unit keeps running once started: anything but a oneshot
    service that does not remain after exit (as wharf's fleet apply says)."""
    if not unit["name"].endswith(".service"):
        return True
    oneshot = setting(unit["contents"], "Type") == "oneshot"
    remains = setting(unit["contents"], "RemainAfterExit") in ("yes", "true", "1", "on")
    return not oneshot or remains


def marker_image(path):
    """The image a wharf drop-in was written for, from its first line."""
    try:
        with open(path) as dropin:
            first = dropin.readline().rstrip("\n")
    except OSError:
        return None
    if first.startswith(MARKER_HEAD) and first.endswith(MARKER_TAIL):
        return first[len(MARKER_HEAD) : -len(MARKER_TAIL)] or None
    return None


def dropin(shown, name):
    for path in shown.get("DropInPaths", "").split():
        if os.path.basename(path) == name:
            return path
    return None


def profile_file(profile, unit):
    unit_type = unit.rsplit(".", 1)[-1]
    for base in PROFILE_DIRS:
        if os.path.isdir(os.path.join(base, profile)):
            path = os.path.join(base, profile, unit_type + ".conf")
            return path if os.path.isfile(path) else None
    return None


def profile_matches(module, shown, unit, profile):
    """Whether the profile drop-in of an attached unit is the one `profile` gives."""
    current = dropin(shown, PROFILE_DROPIN)
    wanted = profile_file(profile, unit)
    if current is None or wanted is None:
        return current is None and wanted is None
    if os.path.islink(current):
        return os.path.realpath(current) == os.path.realpath(wanted)
    # A copied profile (copy mode): compare what it says, without wharf's marker.
    try:
        with open(current) as have, open(wanted) as want:
            lines = have.read().splitlines(True)
            if lines and lines[0].startswith(MARKER_HEAD):
                lines = lines[1:]
            return "".join(lines) == want.read()
    except OSError as e:
        module.fail_json(msg="cannot compare %s with profile %s: %s" % (current, profile, e))


class Host:
    """The image and its units as they are on the host now."""

    def __init__(self, module, cli, image, prefixes):
        self.module = module
        self.cli = cli
        self.other_state = None
        # Whether the attached image has the profile asked for (when attached).
        self.profile_same = True
        rc, info, error = cli.try_run(["inspect", "--cat", image] + prefixes)
        self.found = rc == 0
        self.inspect_error = error
        self.info = info if self.found else {"units": [], "path": image}
        self.units = [unit for unit in self.info["units"] if "@." not in unit["name"]]
        rc, attached, error = cli.try_run(["is-attached", image])
        if attached is None:
            if not self.found:
                # Neither on disk nor attached under this name.
                self.path, self.state = image, "detached"
            else:
                cli.fail(["is-attached", image], rc, "", error)
        else:
            self.path, self.state = attached["image"], attached["state"]
        if self.found and not self.info["path"].startswith("/"):
            self.info["path"] = self.path
        self.refresh_units()

    def refresh_units(self):
        names = [unit["name"] for unit in self.units]
        self.shown = systemctl_show(self.module, names, SHOWN)

    def attached_units(self):
        """Units on the host that wharf attached from this image."""
        mine = []
        for name, shown in self.shown.items():
            marker = dropin(shown, PORTABLE_DROPIN)
            if marker and marker_image(marker) == self.path:
                mine.append(name)
        return mine

    def other_version(self):
        """The other attached image holding these units or sharing the name
        prefix (as `portable reattach` finds it): (path, wharf's state)."""
        for name, shown in sorted(self.shown.items()):
            marker = dropin(shown, PORTABLE_DROPIN)
            image = marker_image(marker) if marker else None
            if image and image != self.path:
                attached = self.cli.run(["is-attached", image], ok=(0, 1))
                return image, attached["state"]
        prefix = name_prefix(self.path)
        listed = self.cli.run(["list"])
        for entry in listed or []:
            if entry["path"] != self.path and entry["state"] != "detached" and name_prefix(entry["path"]) == prefix:
                return entry["path"], entry["state"]
        return None, None

    def active(self, names):
        return [n for n in names if self.shown.get(n, {}).get("ActiveState") in ("active", "activating", "reloading")]

    def enabled(self, names):
        return [n for n in names if self.shown.get(n, {}).get("UnitFileState", "").startswith("enabled")]

    def snapshot(self, other=None):
        """The state for diff mode; the units' states are the host's,
        whichever image holds them now."""
        names = [unit["name"] for unit in self.units]
        attached_image = self.path if self.state != "detached" else other
        return {
            "image": self.path,
            "state": self.state,
            "attached_image": attached_image,
            "active_units": sorted(self.active(names)) if attached_image else [],
            "enabled_units": sorted(self.enabled(names)) if attached_image else [],
        }


def unit_dir(runtime):
    return "/run/systemd/system" if runtime else "/etc/systemd/system"


def predicted(kind, units, runtime, source):
    """File changes check mode foresees, per unit: wharf has no dry run of
    attach, so these name each unit file, not every drop-in."""
    return [{"kind": kind, "path": os.path.join(unit_dir(runtime), unit), "source": source} for unit in units]


def runtime_suffix(runtime):
    return "-runtime" if runtime else ""


def detach(module, cli, host, result):
    """state=detached."""
    before = host.snapshot()
    after = dict(before)
    if host.state != "detached":
        attached = host.attached_units()
        result.update(changed=True, action="detach", stopped=host.active(attached))
        result["disabled_units"] = host.enabled(attached)
        if module.check_mode:
            result["changes"] = predicted("detach", attached, host.state.endswith("-runtime"), host.path)
        else:
            done = cli.run(["detach", "--now", host.path])
            result["changes"] = done["changes"]
        after = dict(before, state="detached", attached_image=None, active_units=[], enabled_units=[])
    result.update(image=host.path, state="detached")
    finish(module, result, before, after)


def file_step(module, cli, host, result):
    """Attaches, reattaches (another version, or this one with other
    settings) or leaves the image's files; returns the units it started."""
    p = module.params
    names = [u["name"] for u in host.units]
    want_running = p["state"] == "running"
    settings = ["--profile", p["profile"]] + (["--runtime"] if p["runtime"] else [])
    image = [p["image"]] + p["prefixes"]
    action = result["action"]
    if action == "none":
        return set()
    result["changed"] = True
    if action == "attach":
        flags = (["--enable"] if p["enabled"] else []) + (["--now"] if want_running else [])
        if module.check_mode:
            result["changes"] = predicted("attach", names, p["runtime"], host.path)
            return set(names) if want_running else set()
        done = cli.run(["attach"] + flags + settings + image)
        result["changes"] = done["changes"]
        return set(done["restarted"])

    running_before = host.active(names)
    enabled_before = host.enabled(names)
    replaced = result.get("replaced", host.path)
    runtime_before = (host.other_state if action == "reattach" else host.state).endswith("-runtime")
    move = runtime_before != p["runtime"]
    if module.check_mode:
        result["changes"] = predicted("detach", names, runtime_before, replaced) + predicted(
            "attach", names, p["runtime"], host.path
        )
        return set(names) if want_running else set(running_before)

    started = set()
    if action == "reattach" or not host.profile_same:
        # reattach restarts what ran and, if that fails, puts the old
        # version back. It attaches where the old version was (/etc or
        # /run); a move comes after.
        flags = (["--enable"] if p["enabled"] else []) + (["--now"] if want_running else [])
        place = ["--runtime"] if runtime_before else []
        done = cli.run(["reattach"] + flags + ["--profile", p["profile"]] + place + image)
        result["changes"] = done["changes"]
        started = set(done["restarted"])
        if action == "refresh":
            # wharf restarts what ran from the image it replaces; the same
            # image with another profile replaces none, and its services
            # would go on in the old sandbox.
            stale = [u for u in running_before if u not in started]
            if stale:
                settle(module, "restart", stale)
                started |= set(stale)
    if move:
        started |= move_image(module, cli, host, result, runtime_before, running_before, enabled_before)
    return started


def move_image(module, cli, host, result, runtime_before, running_before, enabled_before):
    """Moves the attached image between /etc and /run: a detach and an
    attach, keeping what ran and what was enabled unless told otherwise.
    If the attach fails, the image is attached again where it was."""
    p = module.params
    enable = p["enabled"] if p["enabled"] is not None else bool(enabled_before)
    run = p["state"] == "running" or bool(running_before)
    flags = (["--enable"] if enable else []) + (["--now"] if run else [])
    image = [p["image"]] + p["prefixes"]
    gone = cli.run(["detach", "--now", host.path])
    settings = ["--profile", p["profile"]]
    rc, done, error = cli.try_run(["attach"] + flags + settings + (["--runtime"] if p["runtime"] else []) + image)
    if rc != 0:
        back = (["--enable"] if enabled_before else []) + (["--now"] if running_before else [])
        back += ["--runtime"] if runtime_before else []
        rc_back, _ignored, error_back = cli.try_run(["attach"] + back + settings + image)
        where = "/run" if runtime_before else "/etc"
        if rc_back == 0:
            again = "attached it below %s again" % where
        else:
            again = "attaching it below %s again failed too: %s" % (where, error_back)
        module.fail_json(msg="%s; %s" % (error, again), changes=result["changes"] + gone["changes"])
    result["changes"] = result["changes"] + gone["changes"] + done["changes"]
    return set(done["restarted"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True),
            state=dict(type="str", default="attached", choices=["attached", "detached", "running"]),
            profile=dict(type="str", default="default"),
            enabled=dict(type="bool"),
            runtime=dict(type="bool", default=False),
            prefixes=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    check = module.check_mode
    cli = Wharf(module, "portable")
    host = Host(module, cli, p["image"], p["prefixes"])
    result = dict(
        changed=False,
        action="none",
        changes=[],
        started=[],
        stopped=[],
        enabled_units=[],
        disabled_units=[],
        units=[unit["name"] for unit in host.units],
    )

    if p["state"] == "detached":
        detach(module, cli, host, result)
    if not host.found:
        module.fail_json(msg=host.inspect_error or "image %s not found" % p["image"])

    names = [u["name"] for u in host.units]
    installable = [u["name"] for u in host.units if "[Install]" in u["contents"]]
    stay_up = [u["name"] for u in host.units if stays_up(u)]
    if host.state == "detached":
        other, host.other_state = host.other_version()
        if other:
            result.update(action="reattach", replaced=other)
        else:
            result["action"] = "attach"
        before = host.snapshot(other)
    else:
        same_place = host.state.endswith("-runtime") == p["runtime"]
        host.profile_same = all(
            profile_matches(module, host.shown[name], name, p["profile"]) for name in host.attached_units()
        )
        result["action"] = "none" if same_place and host.profile_same else "refresh"
        before = host.snapshot()

    started = file_step(module, cli, host, result)
    if check:
        # What the host will be once the file step is done.
        enabled = set(host.enabled(names)) if result["action"] != "attach" else set()
        if p["enabled"] and result["action"] != "none":
            enabled |= set(installable)
        active = (set(host.active(names)) if result["action"] != "attach" else set()) | (started & set(stay_up))
    else:
        if result["action"] != "none":
            # Read the host again: the file step may have enabled, started or restarted units.
            host = Host(module, cli, p["image"], p["prefixes"])
        enabled, active = set(host.enabled(names)), set(host.active(names))
    if p["enabled"] and result["action"] != "none":
        result["enabled_units"] = sorted(set(installable) - set(before["enabled_units"]))

    # Enablement and running, for what the file step did not settle.
    runtime = ["--runtime"] if p["runtime"] else []
    if p["enabled"] is True:
        todo = [u for u in installable if u not in enabled]
        if todo:
            result.update(changed=True, enabled_units=sorted(set(result["enabled_units"]) | set(todo)))
            enabled |= set(todo)
            if not check:
                systemctl(module, "enable", *runtime, "--", *todo)
    elif p["enabled"] is False and enabled:
        result.update(changed=True, disabled_units=sorted(enabled))
        if not check:
            systemctl(module, "disable", *runtime, "--", *sorted(enabled))
        enabled = set()
    if p["state"] == "running":
        todo = [u for u in stay_up if u not in active]
        if todo:
            result["changed"] = True
            started |= set(todo)
            active |= set(todo)
            if not check:
                settle(module, "start", todo)
    result["started"] = sorted(started)

    if check:
        suffix = runtime_suffix(p["runtime"])
        state = "running" if active else "enabled" if enabled else "attached"
        after = dict(
            before,
            image=host.path,
            state=host.state if result["action"] == "none" and not result["changed"] else state + suffix,
            attached_image=host.path,
            active_units=sorted(active),
            enabled_units=sorted(enabled),
        )
    else:
        if result["changed"]:
            host = Host(module, cli, p["image"], p["prefixes"])
        after = host.snapshot()
    result.update(image=host.path, state=after["state"])
    finish(module, result, before, after)


def settle(module, verb, units):
    """Starts (or restarts) units and watches them for a moment: the start
    job of a simple service is done once systemd has forked, so one whose
    binary is missing still "starts" and fails right after."""
    systemctl(module, verb, "--", *units)
    checks = 5
    while checks:
        checks -= 1
        shown = systemctl_show(module, units, ("ActiveState", "Result"))
        failed = [u for u in units if shown[u].get("ActiveState") == "failed"]
        if failed:
            module.fail_json(
                msg="%s failed right after it was started (result: %s); see journalctl -u %s"
                % (failed[0], shown[failed[0]].get("Result"), failed[0]),
                started=units,
            )
        time.sleep(0.1)


def finish(module, result, before, after):
    if module._diff:
        if result["changes"]:
            after = dict(after, changes=result["changes"])
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
