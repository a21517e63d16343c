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
    by this module, and what it knows of the image (its profile, its units and
    their states, whether a unit can be enabled or keeps running) comes from
    C(portable is-attached --json). Enabling and disabling units that are
    already attached is done with C(systemctl), as for any other unit; units
    that should run are started by C(portable attach --now), which waits
    until they run.
  - When the image is attached with another profile, V(attached) and
    V(running) reattach it with the new one, restarting what runs.
author: wharf authors (!UNKNOWN)
extends_documentation_fragment:
  - wharf.wharf.attributes
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
    the ones wharf reports; in check mode they are wharf's own plan (C(portable
    attach), C(reattach) or C(detach) with C(--check)), which is checked as a
    real run would be and changes nothing.
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
  description:
    - What happened to the image's files (V(none), V(attach), V(reattach), V(refresh), V(detach)).
    - V(refresh) is the same image with another profile, or moved between C(/etc) and C(/run).
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
    - The file changes, as C(portable --json) reports them (kind V(mkdir),
      V(write), V(symlink) or V(unlink), path, source).
    - In check mode, the ones wharf's plan would make, in the same kinds.
  returned: always
  type: list
  elements: dict
planned_move:
  description: In check mode, how a move between C(/etc) and C(/run) would be done (its attach cannot be planned while the image is attached).
  returned: in check mode, when the image would move
  type: str
  sample: detach, then attach below /run
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wharf.wharf.plugins.module_utils.wharf import Wharf, require, systemctl

STATUS_KEYS = ("image", "state", "attached", "profile", "runtime", "units")
OPERATION_KEYS = ("changes", "units", "restarted", "replaced")
UP = ("active", "activating", "reloading")


class Portable:
    """wharf's `portable` tool, asked for what the module needs to know."""

    def __init__(self, module):
        self.module = module
        self.cli = Wharf(module, "portable")

    def status(self, image):
        """`portable is-attached --json`: the image as attached, unit by unit."""
        rc, doc, error = self.cli.try_run(["is-attached", image])
        if rc not in (0, 1) or not isinstance(doc, dict) or "error" in doc:
            self.cli.fail(["is-attached", image], rc, "", error)
        return require(self.module, doc, STATUS_KEYS, "portable is-attached --json %s" % image)

    def operation(self, verb, args):
        """attach, reattach or detach (with --check in check mode): what
        it changed, or would change, in wharf's own words."""
        check = ["--check"] if self.module.check_mode else []
        done = self.cli.run([verb] + check + args)
        return require(self.module, done, OPERATION_KEYS, "portable %s --json" % verb)

    def try_operation(self, verb, args):
        rc, done, error = self.cli.try_run([verb] + args)
        if rc == 0:
            return require(self.module, done, OPERATION_KEYS, "portable %s --json" % verb), None
        message = done["error"].get("message") if isinstance(done, dict) and isinstance(done.get("error"), dict) else None
        return None, message or error or "portable %s exited with status %d" % (verb, rc)


def active(status):
    return sorted(u["name"] for u in status["units"] if u["active_state"] in UP)


def enabled(status):
    return sorted(u["name"] for u in status["units"] if u["unit_file_state"].startswith("enabled"))


def snapshot(status, attached_image=None):
    """The state for diff mode; the units' states are the host's, whichever
    image holds them now."""
    attached_image = status["image"] if status["attached"] else attached_image
    return {
        "image": status["image"],
        "state": status["state"],
        "attached_image": attached_image,
        "active_units": active(status) if status["attached"] else [],
        "enabled_units": enabled(status) if status["attached"] else [],
    }


def detach(module, wharf, status, result):
    """state=detached."""
    before = snapshot(status)
    after = dict(before)
    if status["attached"]:
        done = wharf.operation("detach", ["--now", status["image"]])
        result.update(
            changed=True,
            action="detach",
            changes=done["changes"],
            stopped=done["restarted"],
            disabled_units=enabled(status),
        )
        after = dict(before, state="detached", attached_image=None, active_units=[], enabled_units=[])
    result.update(image=status["image"], state="detached", units=[u["name"] for u in status["units"]])
    finish(module, result, before, after)


def place_flags(runtime):
    return ["--runtime"] if runtime else []


def move(module, wharf, status, result, flags):
    """Moves the attached image between /etc and /run: a detach and an
    attach, keeping what ran and what was enabled unless told otherwise.
    If the attach fails, the image is attached again where it was."""
    p = module.params
    image = [p["image"]] + p["prefixes"]
    profile = ["--profile", p["profile"]]
    gone = wharf.operation("detach", ["--now", status["image"]])
    result["changes"] += gone["changes"]
    if module.check_mode:
        # Attached still, so the attach cannot be planned: it would write
        # the same units below the other directory.
        result["planned_move"] = "detach, then attach below %s" % ("/run" if p["runtime"] else "/etc")
        return set(active(status)) if p["state"] != "running" else set(u["name"] for u in status["units"])
    done, error = wharf.try_operation("attach", flags + profile + place_flags(p["runtime"]) + image)
    if done is None:
        back = (["--enable"] if enabled(status) else []) + (["--now"] if active(status) else [])
        _again, error_back = wharf.try_operation("attach", back + profile + place_flags(status["runtime"]) + image)
        where = "/run" if status["runtime"] else "/etc"
        again = "attached it below %s again" % where if error_back is None else (
            "attaching it below %s again failed too: %s" % (where, error_back)
        )
        module.fail_json(msg="%s; %s" % (error, again), changes=result["changes"])
    result["changes"] += done["changes"]
    return set(done["restarted"])


def file_step(module, wharf, status, result):
    """Attaches, reattaches (another version, or this one with another
    profile), moves, or leaves the image's files; returns the units it
    started or restarted, and the image it replaced."""
    p = module.params
    image = [p["image"]] + p["prefixes"]
    profile = ["--profile", p["profile"]]
    now = ["--now"] if p["state"] == "running" else []
    enable = ["--enable"] if p["enabled"] else []
    if not status["attached"]:
        # reattach finds the other version attached (by units or name
        # prefix) and replaces it, restarting what ran; with none, it attaches.
        done = wharf.operation("reattach", enable + now + profile + place_flags(p["runtime"]) + image)
        result.update(changed=True, changes=done["changes"], units=done["units"])
        if done["replaced"]:
            result.update(action="reattach", replaced=done["replaced"][0])
            old = wharf.status(done["replaced"][0])
            if old["runtime"] != p["runtime"]:
                # reattach attached where the old version was.
                moved = wharf.status(p["image"]) if not module.check_mode else dict(old, image=status["image"])
                return set(done["restarted"]) | move(module, wharf, moved, result, enable + now)
        else:
            result["action"] = "attach"
        return set(done["restarted"])
    if status["runtime"] != p["runtime"]:
        result.update(changed=True, action="refresh")
        keep = (["--enable"] if enabled(status) or p["enabled"] else []) + (["--now"] if active(status) or now else [])
        return move(module, wharf, status, result, keep)
    if status["profile"] != p["profile"]:
        # The same image with another profile: reattach restarts what runs
        # in the new sandbox.
        result.update(changed=True, action="refresh")
        done = wharf.operation("reattach", enable + now + profile + place_flags(status["runtime"]) + image)
        result["changes"] = done["changes"]
        return set(done["restarted"])
    return set()


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
    wharf = Portable(module)
    status = wharf.status(p["image"])
    result = dict(
        changed=False,
        action="none",
        changes=[],
        started=[],
        stopped=[],
        enabled_units=[],
        disabled_units=[],
        units=[u["name"] for u in status["units"]],
    )
    if p["state"] == "detached":
        detach(module, wharf, status, result)

    before = snapshot(status)
    started = file_step(module, wharf, status, result)
    if result.get("replaced"):
        before = snapshot(status, attached_image=result["replaced"])
        if not status["attached"]:
            replaced = wharf.status(result["replaced"])
            before.update(active_units=active(replaced), enabled_units=enabled(replaced))
    if check:
        planned = predicted(module, wharf, status, result, started)
    else:
        status = wharf.status(p["image"])
        result["units"] = [u["name"] for u in status["units"]]
        planned = None

    # Enablement and running, for what the file step did not settle.
    runtime = place_flags(p["runtime"])
    if not check:
        installable = [u["name"] for u in status["units"] if u["installable"] and not u["template"]]
        on = enabled(status)
        if p["enabled"] is True:
            todo = [u for u in installable if u not in on]
            if todo:
                result["changed"] = True
                result["enabled_units"] = sorted(set(result["enabled_units"]) | set(todo))
                systemctl(module, "enable", *runtime, "--", *todo)
        elif p["enabled"] is False and on:
            result.update(changed=True, disabled_units=on)
            systemctl(module, "disable", *runtime, "--", *on)
        if p["state"] == "running":
            down = [u["name"] for u in status["units"] if u["stays_up"] and not u["template"] and u["active_state"] not in UP]
            if down:
                # wharf starts them and waits until they run (or says which failed).
                done = wharf.operation("attach", ["--now", "--profile", p["profile"]] + runtime + [p["image"]] + p["prefixes"])
                result["changed"] = True
                started |= set(done["restarted"])
        if result["changed"]:
            status = wharf.status(p["image"])
        after = snapshot(status)
    else:
        after = planned
    result["started"] = sorted(started)
    result.update(image=status["image"], state=after["state"])
    finish(module, result, before, after)


def predicted(module, wharf, status, result, started):
    """Check mode: the host once the task is done, from wharf's plan."""
    p = module.params
    units = result["units"] if result["action"] in ("attach", "reattach") else [u["name"] for u in status["units"]]
    by_name = dict((u["name"], u) for u in status["units"])
    on = set(enabled(status)) if status["attached"] else set()
    up = set(active(status)) if status["attached"] else set()
    if result.get("replaced"):
        replaced = wharf.status(result["replaced"])
        on, up = set(enabled(replaced)) & set(units), set(active(replaced)) & set(units)
    if p["enabled"] is True:
        todo = sorted(
            u for u in units if u not in on and by_name.get(u, {"installable": True})["installable"] and "@." not in u
        )
        if todo:
            result.update(changed=True, enabled_units=todo)
            on |= set(todo)
    elif p["enabled"] is False and on:
        result.update(changed=True, disabled_units=sorted(on))
        on = set()
    up |= started
    if p["state"] == "running":
        todo = [u for u in units if u not in up and by_name.get(u, {"stays_up": True})["stays_up"] and "@." not in u]
        if todo:
            result["changed"] = True
            started |= set(todo)
            up |= set(todo)
    suffix = "-runtime" if p["runtime"] else ""
    state = "running" if up else "enabled" if on else "attached"
    return {
        "image": status["image"],
        "state": status["state"] if not result["changed"] else state + suffix,
        "attached_image": status["image"],
        "active_units": sorted(up),
        "enabled_units": sorted(on),
    }


def finish(module, result, before, after):
    if module._diff:
        if result["changes"]:
            after = dict(after, changes=result["changes"])
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
