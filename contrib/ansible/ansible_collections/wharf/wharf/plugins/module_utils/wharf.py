# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""What the wharf modules share: running wharf's CLI with --json, and
reading units' state from systemctl."""

from __future__ import annotations

import json


class Wharf:
    """One of wharf's command line tools (portable, machine), run with --json."""

    def __init__(self, module, tool):
        self.module = module
        self.tool = tool
        self.path = module.get_bin_path(tool, required=True)

    def run(self, args, ok=(0,)):
        """Runs `TOOL --json ARGS`; returns its parsed JSON (None if it printed
        none). Any exit status not in `ok` fails the task with wharf's
        one-line error."""
        argv = [self.path, "--json"] + list(args)
        rc, out, err = self.module.run_command(argv)
        if rc not in ok:
            self.fail(argv, rc, out, err)
        return parse(out)

    def try_run(self, args):
        """Runs `TOOL --json ARGS`; returns (exit status, parsed JSON or None, error line)."""
        argv = [self.path, "--json"] + list(args)
        rc, out, err = self.module.run_command(argv)
        return rc, parse(out), err.strip()

    def fail(self, argv, rc, out, err):
        # wharf's errors are one line on stderr, "tool: what: why".
        message = err.strip() or out.strip() or "%s exited with status %d" % (self.tool, rc)
        self.module.fail_json(msg=message, rc=rc, cmd=argv, stdout=out, stderr=err)


def parse(text):
    text = text.strip()
    if not text:
        return None
    return json.loads(text)


def systemctl_show(module, units, properties):
    """`systemctl show` of units: {unit: {property: value}}."""
    units = list(units)
    if not units:
        return {}
    systemctl = module.get_bin_path("systemctl", required=True)
    argv = [systemctl, "show", "--no-pager", "-p", ",".join(["Id"] + list(properties)), "--"] + units
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="systemctl show: %s" % err.strip(), rc=rc, cmd=argv)
    shown = {}
    # One block per unit, in the order asked, separated by empty lines.
    blocks = [block for block in out.split("\n\n") if block.strip()]
    for unit, block in zip(units, blocks):
        values = {}
        for line in block.splitlines():
            key, value = line.partition("=")[::2]
            values[key] = value
        shown[unit] = values
    return shown


def systemctl(module, *args):
    """Runs systemctl; fails the task with its message if it fails."""
    argv = [module.get_bin_path("systemctl", required=True)] + list(args)
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="systemctl %s: %s" % (" ".join(args), err.strip() or out.strip()), rc=rc, cmd=argv)
    return out
