# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""module_utils/wharf.py with a stand-in for AnsibleModule: run_command
answers from a table, fail_json raises."""

from __future__ import annotations

import json

import pytest

from ansible_collections.wharf.wharf.plugins.module_utils.wharf import (
    MINIMUM_WHARF,
    Wharf,
    parse,
    parse_version,
    require,
)


class Failed(Exception):
    """What fail_json raised: its arguments are in .result."""

    def __init__(self, result):
        super().__init__(result.get("msg"))
        self.result = result


class FakeModule:
    """Answers `TOOL ARGS...` from `answers` (argv without the tool's path ->
    (rc, stdout, stderr)); `--version` answers `version` unless given."""

    def __init__(self, answers=None, version="portable 0.1.0\n"):
        self.answers = dict(answers or {})
        self.version = version
        self.calls = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, argv):
        self.calls.append(list(argv))
        key = tuple(argv[1:])
        if key == ("--version",) and key not in self.answers:
            return 0, self.version, ""
        return self.answers[key]

    def fail_json(self, **result):
        raise Failed(result)


def fails(call, *args, **kwargs):
    with pytest.raises(Failed) as failed:
        call(*args, **kwargs)
    return failed.value.result


def test_run_parses_the_json_document():
    doc = {"image": "/srv/foobar.raw", "state": "attached", "units": []}
    module = FakeModule({("--json", "is-attached", "foobar"): (0, json.dumps(doc) + "\n", "")})
    assert Wharf(module, "portable").run(["is-attached", "foobar"]) == doc
    assert module.calls == [["/usr/bin/portable", "--version"], ["/usr/bin/portable", "--json", "is-attached", "foobar"]]


def test_run_of_nothing_is_none():
    module = FakeModule({("--json", "enable", "f28"): (0, "", "")})
    assert Wharf(module, "machine").run(["enable", "f28"]) is None


def test_an_exit_status_in_ok_is_no_failure():
    module = FakeModule({("--json", "apply", "--check", "f.toml"): (2, '{"changed": true}', "")})
    assert Wharf(module, "portable").run(["apply", "--check", "f.toml"], ok=(0, 2)) == {"changed": True}


def test_output_that_is_not_json_fails_with_a_message():
    text = "Segmentation fault: " + "x" * 300
    module = FakeModule({("--json", "list"): (0, text, "")})
    result = fails(Wharf(module, "machine").run, ["list"])
    assert result["msg"] == "machine list: printed no JSON document: " + text[:200]
    assert result["stdout"] == text


def test_try_run_fails_on_output_that_is_not_json():
    module = FakeModule({("--json", "is-attached", "x.raw"): (1, "not json", "")})
    result = fails(Wharf(module, "portable").try_run, ["is-attached", "x.raw"])
    assert result["msg"] == "portable is-attached x.raw: printed no JSON document: not json"


def test_try_run_returns_the_error_document_and_its_message():
    error = {"error": {"kind": "no-such-image", "message": "no image f29"}}
    module = FakeModule({("--json", "image-status", "f29"): (1, json.dumps(error), "machine: no image f29\n")})
    assert Wharf(module, "machine").try_run(["image-status", "f29"]) == (1, error, "no image f29")


def test_the_json_document_is_found_after_other_lines():
    assert parse('warning: something\n{"a": 1}\n') == {"a": 1}
    assert parse("  \n") is None
    with pytest.raises(ValueError):
        parse("{not json")


def test_an_error_document_on_stdout_gives_its_message():
    error = {"error": {"kind": "conflict", "message": "foobar is attached"}}
    module = FakeModule({("--json", "remove", "foobar"): (1, json.dumps(error) + "\n", "portable: foobar is attached\n")})
    result = fails(Wharf(module, "portable").run, ["remove", "foobar"])
    assert result["msg"] == "foobar is attached"
    assert result["rc"] == 1
    assert result["error_kind"] == "conflict"


def test_an_error_document_on_stderr_gives_its_message():
    error = {"error": {"kind": "access-denied", "message": "attach needs root"}}
    module = FakeModule({("--json", "attach", "a.raw"): (1, "", json.dumps(error) + "\n")})
    result = fails(Wharf(module, "portable").run, ["attach", "a.raw"])
    assert result["msg"] == "attach needs root"
    assert result["error_kind"] == "access-denied"


def test_without_a_document_the_stderr_line_is_the_message():
    module = FakeModule({("--json", "start", "f28"): (1, "", "machine: f28 did not boot within 60 s\n")})
    assert fails(Wharf(module, "machine").run, ["start", "f28"])["msg"] == "machine: f28 did not boot within 60 s"


def test_without_any_message_the_exit_status_is_the_message():
    module = FakeModule({("--json", "start", "f28"): (3, "", "")})
    assert fails(Wharf(module, "machine").run, ["start", "f28"])["msg"] == "machine exited with status 3"


def test_fail_with_the_line_try_run_returned():
    wharf = Wharf(FakeModule(), "portable")
    assert fails(wharf.fail, ["is-attached", "x"], 2, "", "no wharfd")["msg"] == "no wharfd"


def test_require_returns_a_complete_record():
    record = {"path": "/var/lib/machines/f28.raw", "more": 1}
    assert require(FakeModule(), record, ("path",), "machine import-raw --json") is record


def test_require_fails_on_a_missing_key():
    result = fails(require, FakeModule(), {"unit": "x"}, ("unit", "ready"), "machine start --json")
    assert result["msg"] == ("machine start --json: wharf's answer has no 'ready' "
                             "(is wharf too old or too new for this collection?)")


def test_require_fails_on_an_answer_that_is_no_object():
    result = fails(require, FakeModule(), None, ("unit",), "machine start --json")
    assert result["msg"] == ("machine start --json: wharf's answer has no 'unit' "
                             "(is wharf too old or too new for this collection?)")


def test_a_good_version_passes_once():
    module = FakeModule({("--json", "list"): (0, "[]", "")}, version="machine 0.1.0\n")
    wharf = Wharf(module, "machine")
    wharf.run(["list"])
    wharf.run(["list"])
    assert wharf.version == (0, 1, 0)
    assert [argv[1:] for argv in module.calls] == [["--version"], ["--json", "list"], ["--json", "list"]]


def test_a_newer_version_passes():
    module = FakeModule(version="portable 1.2.3-rc.1\n")
    assert Wharf(module, "portable").check_version((0, 1, 0)) == (1, 2, 3)


def test_a_version_too_old_fails_naming_both():
    module = FakeModule({("--json", "list"): (0, "[]", "")}, version="portable 0.0.9\n")
    result = fails(Wharf(module, "portable").run, ["list"])
    assert result["msg"] == "portable is wharf 0.0.9, older than 0.1.0, the oldest this collection works with"
    # Nothing but --version ran.
    assert module.calls == [["/usr/bin/portable", "--version"]]


def test_check_version_with_a_minimum_of_its_own():
    result = fails(Wharf(FakeModule(), "portable").check_version, (0, 2))
    assert result["msg"] == "portable is wharf 0.1.0, older than 0.2, the oldest this collection works with"


def test_an_unreadable_version_fails():
    result = fails(Wharf(FakeModule(version="portable\n"), "portable").check_version)
    assert result["msg"] == "portable --version printed no version ('portable'); this collection needs wharf 0.1.0 or newer"


def test_a_failing_version_fails():
    module = FakeModule({("--version",): (2, "", "error: unexpected argument '--version' found\n\nUsage: portable\n")})
    result = fails(Wharf(module, "portable").check_version)
    assert result["msg"] == ("portable --version exited with status 2 (error: unexpected argument '--version' found); "
                             "this collection needs wharf 0.1.0 or newer")


def test_parse_version():
    assert MINIMUM_WHARF == (0, 1, 0)
    assert parse_version("portable 0.1.0") == (0, 1, 0)
    assert parse_version("machine v2.10") == (2, 10, 0)
    assert parse_version("portable 0.3.1+git.abc") == (0, 3, 1)
    assert parse_version("portable dev") is None
