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
    # It copies `src` to the target: ActionBase makes the remote temporary
    # directory, which run() removes (as cleanup() would) once the module is done.
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            result.update(self._apply(task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _apply(self, task_vars):
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is None:
            return self._execute_module(module_args=args, task_vars=task_vars)
        if args.get("path") is not None:
            raise AnsibleActionFail("parameters are mutually exclusive: path, src")
        try:
            found = self._find_needle("files", src)
            # A vaulted file is decrypted into a local temporary copy.
            local = self._loader.get_real_file(found, decrypt=True)
        except AnsibleError as e:
            raise AnsibleActionFail(to_text(e))
        try:
            tmpdir = self._connection._shell.tmpdir
            if tmpdir is None:
                tmpdir = self._make_tmp_path()
            # Named after the file the user wrote, not its decrypted copy.
            remote = self._connection._shell.join_path(tmpdir, os.path.basename(found))
            self._transfer_file(local, remote)
        finally:
            self._loader.cleanup_tmp_file(local)
        self._fixup_perms2((tmpdir, remote))
        args["path"] = remote
        result = self._execute_module(module_args=args, task_vars=task_vars)
        # Name the plan after the file the user wrote, not its temporary copy.
        diff = result.get("diff")
        if isinstance(diff, dict) and isinstance(diff.get("prepared"), str):
            diff["prepared"] = diff["prepared"].replace(remote, src)
        result["src"] = src
        return result
