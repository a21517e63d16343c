# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""A stdout callback for wharf's integration test of the collection: one JSON
document with every task result and the play recap, so the test reads what
each host did instead of parsing screen output. (ansible-core ships no JSON
callback; ansible.posix's is not on PyPI on its own.)"""

from __future__ import annotations

DOCUMENTATION = r"""
name: results
type: stdout
short_description: every task result and the recap, as one JSON document
description:
  - Prints one JSON document, with C(results) (play, task, host, status and
    result of every task on every host) and C(stats) (the recap, per host).
"""

import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "results"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = []
        self.play = None

    def v2_playbook_on_play_start(self, play):
        self.play = play.get_name()

    def _record(self, result, status):
        self.results.append(
            {
                "play": self.play,
                "task": result._task.get_name(),
                "host": result._host.get_name(),
                "status": status,
                "result": result._result,
            }
        )

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        summary = {host: stats.summarize(host) for host in hosts}
        self._display.display(json.dumps({"results": self.results, "stats": summary}, default=str, sort_keys=True))
