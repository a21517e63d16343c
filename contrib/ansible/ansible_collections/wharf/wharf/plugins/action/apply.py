# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""The controller side of wharf.wharf.apply: a fleet file given as `src`
is copied to the target's temporary directory and applied from there."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is None:
            result.update(self._execute_module(module_args=args, task_vars=task_vars))
            return result
        if args.get("path") is not None:
            raise AnsibleActionFail("parameters are mutually exclusive: path, src")
        try:
            local = self._loader.get_real_file(self._find_needle("files", src))
        except AnsibleError as e:
            raise AnsibleActionFail(to_text(e))
        tmpdir = self._make_tmp_path()
        try:
            remote = self._connection._shell.join_path(tmpdir, os.path.basename(local))
            self._transfer_file(local, remote)
            self._fixup_perms2((tmpdir, remote))
            args["path"] = remote
            result.update(self._execute_module(module_args=args, task_vars=task_vars))
            # Name the plan after the file the user wrote, not its temporary copy.
            diff = result.get("diff")
            if isinstance(diff, dict) and "prepared" in diff:
                diff["prepared"] = diff["prepared"].replace(remote, src)
            result["src"] = src
        finally:
            self._remove_tmp_path(tmpdir)
        return result
