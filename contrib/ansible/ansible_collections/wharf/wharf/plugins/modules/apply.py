# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
module: apply
short_description: Bring a host to what a wharf fleet file says
version_added: 0.1.0
description:
  - Runs C(portable apply) with a fleet file (see wharf-fleet(5)), which plans
    the attaches, reattaches, detaches, enables, starts and restarts that bring
    the host to the file, and carries them out all or nothing. When a step
    fails (a new version whose service does not start), everything the apply
    changed is put back and the task fails.
  - C(changed) is whether the plan had steps. In check mode C(portable apply --check)
    plans and changes nothing. In diff mode the plan is shown.
author: wharf authors (!UNKNOWN)
extends_documentation_fragment:
  - wharf.wharf.attributes
  - wharf.wharf.attributes.action
options:
  path:
    description:
      - The fleet file on the target.
      - Relative image paths in it are relative to its directory.
    type: path
  src:
    description:
      - A fleet file on the controller, copied to a temporary file on the target
        for the apply and removed afterwards. Searched for like the C(src) of
        M(ansible.builtin.copy) (the role's or playbook's C(files/) directory).
      - Its images must then be absolute paths, or names in the portable
        search path, since the copy's directory is a temporary one.
    type: path
  prune:
    description: Also detach images attached by hand that the file does not list.
    type: bool
    default: false
notes:
  - Exactly one of O(path) and O(src) is required.
requirements:
  - wharf (the C(portable) tool and C(wharfd)) on the target, run as root.
"""

EXAMPLES = r"""
- name: Roll out a new version, one host at a time
  hosts: web
  serial: 1
  max_fail_percentage: 0
  tasks:
    - name: Apply the fleet file
      wharf.wharf.apply:
        src: fleet/{{ inventory_hostname }}.toml

- name: Apply a fleet file that is on the host already, detaching all else
  wharf.wharf.apply:
    path: /etc/wharf/fleet.toml
    prune: true
"""

RETURN = r"""
file:
  description: The fleet file that was applied, as the target saw it.
  returned: always
  type: str
applied:
  description: Whether the plan was carried out (false in check mode or when there was nothing to do).
  returned: always
  type: bool
plan:
  description: The plan, as C(portable apply --json) gives it.
  returned: always
  type: dict
  sample: {steps: [{action: reattach, from: /srv/foobar_1.raw, image: /srv/foobar_2.raw, profile: default, runtime: false,
                    text: "reattach /srv/foobar_1.raw -> /srv/foobar_2.raw (profile default)"}]}
src:
  description: The fleet file on the controller, as O(src) named it.
  returned: when O(src) was given
  type: str
  sample: fleet/web1.toml
plan_lines:
  description: The plan's steps in words, as C(portable apply) prints them (each step's C(text)).
  returned: always
  type: list
  elements: str
  sample: ["reattach /srv/foobar_1.raw -> /srv/foobar_2.raw (profile default)", "restart foobar.service"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wharf.wharf.plugins.module_utils.wharf import Wharf, require

# Exit status of `portable apply --check` when the host differs from the file.
CHANGES_PENDING = 2


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            # Handled by the action plugin, which turns it into `path`.
            src=dict(type="path"),
            prune=dict(type="bool", default=False),
        ),
        required_one_of=[("path", "src")],
        mutually_exclusive=[("path", "src")],
        supports_check_mode=True,
    )
    p = module.params
    if p["path"] is None:
        module.fail_json(msg="src is copied by the wharf.wharf.apply action plugin; run this module as a task")
    cli = Wharf(module, "portable")
    args = ["apply"] + (["--check"] if module.check_mode else []) + (["--prune"] if p["prune"] else [])
    ok = (0, CHANGES_PENDING) if module.check_mode else (0,)
    done = require(module, cli.run(args + [p["path"]], ok=ok), ("changed", "applied", "file", "plan"), "portable apply --json")
    steps = require(module, done["plan"], ("steps",), "portable apply --json")["steps"]
    # Each step carries its words, as `portable apply` prints them.
    lines = [require(module, step, ("action", "text"), "a step of portable apply --json")["text"] for step in steps]
    result = dict(
        changed=bool(done["changed"]),
        applied=bool(done["applied"]),
        file=done["file"],
        plan=done["plan"],
        plan_lines=lines,
    )
    if module._diff and lines:
        numbered = "".join("%3d. %s\n" % (n, line) for n, line in enumerate(lines, 1))
        result["diff"] = dict(prepared="wharf plan for %s:\n%s" % (done["file"], numbered))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
