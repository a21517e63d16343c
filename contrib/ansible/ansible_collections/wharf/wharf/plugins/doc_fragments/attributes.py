# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""The attributes the wharf modules share, for their DOCUMENTATION:

    extends_documentation_fragment:
      - wharf.wharf.attributes
      - wharf.wharf.attributes.action   # a module with an action plugin (apply)

A module can still give details of its own under `attributes:`; they are
merged into these, key by key."""

from __future__ import annotations


class ModuleDocFragment:

    # Every wharf module: check and diff modes are wharf's own (its --check
    # plans), on Linux hosts with systemd and wharf.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
    support: full
    details:
      - The module asks wharf for its plan (C(--check)) and changes nothing; the
        plan is wharf's own, not a guess of the module's.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
    support: full
    details:
      - The diff shows wharf's plan, in wharf's words.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: linux
    details:
      - Hosts with systemd and wharf (its command line tools and C(wharfd)), run as root.
"""

    # A module with an action plugin, which does part of its work on the
    # controller (apply copies a fleet file given as src).
    ACTION = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  bypass_host_loop:
    description:
      - Forces a 'global' task that does not execute per host, this bypasses per host templating and serial,
        throttle and other loop considerations.
      - Conditionals will work as if C(run_once) is being used, variables used will be from the first available host.
      - This action will not work normally outside of lockstep strategies.
    support: none
"""
