# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks in a container on the controller host through nsenter
description:
  - Runs commands in a container that runs on the controller host itself, by
    entering all the namespaces of one of its processes with C(nsenter -t PID -a).
    No network, no SSH and no agent in the container are involved.
  - Meant for wharf's testbeds and for C(systemd-nspawn) containers (or any other
    container whose init PID the controller can see). For an nspawn container
    registered with systemd-machined, the PID is
    C(machinectl show NAME -p Leader --value).
  - Files are streamed through C(nsenter) (C(cat) in the container) rather than
    copied through C(/proc/PID/root), because absolute symbolic links in the
    container would resolve against the controller's root there.
  - Commands run as the container's root with a clean environment (C(PATH),
    C(HOME=/root), C(LANG=C.UTF-8)), not with the controller's.
author: wharf authors (!UNKNOWN)
version_added: 0.1.0
extends_documentation_fragment:
  - connection_pipelining
options:
  pid:
    description:
      - PID, as the controller sees it, of a process of the container (its init).
      - When not set, C(ansible_host) is used if it is a number.
    type: int
    vars:
      - name: wharf_nsenter_pid
    env:
      - name: WHARF_NSENTER_PID
  remote_addr:
    description:
      - The host's address; used as the PID when O(pid) is not set and it is a number.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  nsenter_path:
    description: The C(nsenter) program on the controller (util-linux).
    type: str
    default: nsenter
    vars:
      - name: wharf_nsenter_path
notes:
  - The controller must run as root (entering another PID's namespaces needs
    C(CAP_SYS_ADMIN) over them); the remote user and C(become) are ignored,
    everything runs as root in the container.
  - Turn on pipelining (C(ANSIBLE_PIPELINING=1) or C(ansible_pipelining=true)) to
    run modules without copying them first.
"""

EXAMPLES = r"""
# inventory.yml: three testbeds, by their init PIDs
all:
  hosts:
    host1: {wharf_nsenter_pid: 4711}
    host2: {ansible_host: "4812"}
  vars:
    ansible_connection: wharf.wharf.nsenter
    ansible_python_interpreter: /usr/bin/python3
    ansible_pipelining: true
"""

import os
import shlex
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

# The container gets none of the controller's environment (its PATH may
# point into a virtualenv, its PYTHON* variables would steer the target's
# Python): only what a root login shell would have.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class Connection(ConnectionBase):
    """Commands and files through nsenter into a local container."""

    transport = "wharf.wharf.nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None
        self._nsenter = None

    def _target_pid(self):
        pid = self.get_option("pid")
        if pid is None:
            address = to_text(self.get_option("remote_addr") or "")
            if not address.isdigit():
                raise AnsibleConnectionFailure(
                    "wharf.wharf.nsenter needs the container's PID: set wharf_nsenter_pid, "
                    "or ansible_host to the PID (it is %r)" % address
                )
            pid = int(address)
        if not os.path.isdir("/proc/%d" % pid):
            raise AnsibleConnectionFailure("no process %d on the controller: is the container running?" % pid)
        return pid

    def _connect(self):
        if not self._connected:
            self._pid = self._target_pid()
            self._nsenter = shutil.which(self.get_option("nsenter_path"))
            if self._nsenter is None:
                raise AnsibleConnectionFailure(
                    "%s not found on the controller (it is in util-linux)" % self.get_option("nsenter_path")
                )
            self._play_context.remote_user = "root"
            display.vvv("ESTABLISH NSENTER CONNECTION TO PID %d" % self._pid, host=self._play_context.remote_addr)
            self._connected = True
        return self

    def _argv(self, script):
        return [self._nsenter, "-t", str(self._pid), "-a", "--", "/bin/sh", "-c", script]

    def _spawn(self, script, stdin, stdout):
        display.vvv("EXEC %s" % script, host=self._play_context.remote_addr)
        try:
            return subprocess.Popen(
                [to_bytes(arg) for arg in self._argv(script)],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=CONTAINER_ENV,
                # The container's root, not the controller's working directory.
                cwd="/",
            )
        except OSError as e:
            raise AnsibleConnectionFailure("cannot run nsenter: %s" % to_native(e))

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        process = self._spawn(to_text(cmd), subprocess.PIPE, subprocess.PIPE)
        stdout, stderr = process.communicate(in_data)
        return process.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv("PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path)):
            raise AnsibleFileNotFound("file or module does not exist: %s" % to_native(in_path))
        with open(to_bytes(in_path), "rb") as source:
            process = self._spawn("cat > %s" % shlex.quote(out_path), source, subprocess.DEVNULL)
            stderr = process.communicate()[1]
        if process.returncode != 0:
            raise AnsibleError("failed to put %s into the container as %s: %s" % (in_path, out_path, to_native(stderr)))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv("FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        partial = "%s.part" % out_path
        try:
            with open(to_bytes(partial), "wb") as target:
                process = self._spawn("cat %s" % shlex.quote(in_path), subprocess.DEVNULL, target)
                stderr = process.communicate()[1]
            if process.returncode != 0:
                raise AnsibleError(
                    "failed to fetch %s from the container: %s" % (in_path, to_native(stderr).strip())
                )
            os.rename(to_bytes(partial), to_bytes(out_path))
        finally:
            if os.path.exists(to_bytes(partial)):
                os.unlink(to_bytes(partial))

    def close(self):
        self._connected = False
