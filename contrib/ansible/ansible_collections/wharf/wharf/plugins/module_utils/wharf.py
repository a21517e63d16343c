# Copyright (c) the wharf authors
# SPDX-License-Identifier: MIT OR Apache-2.0

"""What the wharf modules share: running wharf's CLI with --json, and
systemctl for enabling and disabling units.

The modules ask wharf (its `--check` plans, its `--json` documents) rather
than work out wharf's answers themselves, so what they read of its documents
is checked: an answer that is not JSON, or lacks a key, fails the task with
a message naming the command, not with a traceback."""

from __future__ import annotations

import json
import re

# The oldest wharf whose --json documents this collection reads.
MINIMUM_WHARF = (0, 1, 0)

# How much of an unparsable answer a failure message quotes.
QUOTED = 200


class Wharf:
    """One of wharf's command line tools (portable, machine), run with --json.

    The first command run checks, once, that the tool is at least
    MINIMUM_WHARF (`TOOL --version`)."""

    def __init__(self, module, tool, minimum=MINIMUM_WHARF):
        self.module = module
        self.tool = tool
        self.path = module.get_bin_path(tool, required=True)
        self.minimum = tuple(minimum)
        self.version = None

    def run(self, args, ok=(0,)):
        """Runs `TOOL --json ARGS`; returns its parsed JSON (None if it printed
        none). Any exit status not in `ok` fails the task with wharf's
        error; so does an answer that is not JSON."""
        args = list(args)
        argv = self._argv(args)
        rc, out, err = self.module.run_command(argv)
        if rc not in ok:
            self.fail(argv, rc, out, err)
        return self._parse(args, argv, rc, out, err)

    def try_run(self, args):
        """Runs `TOOL --json ARGS`; returns (exit status, parsed JSON or None,
        error line). The JSON is what wharf printed on stdout, which for a
        failure is its error document, `{"error": {"kind": ..., "message":
        ...}}`; the error line is wharf's message (empty if none). An answer
        that is not JSON fails the task."""
        args = list(args)
        argv = self._argv(args)
        rc, out, err = self.module.run_command(argv)
        doc = self._parse(args, argv, rc, out, err)
        return rc, doc, error_message(doc, err, self.tool) or ""

    def fail(self, argv, rc, out, err):
        """Fails the task with wharf's error: the message of its JSON error
        document (on stdout or stderr) if there is one, else its line on
        stderr, else the exit status."""
        doc = _error_document(out) or _error_document(err)
        message = error_message(doc, err, self.tool) or "%s exited with status %d" % (self.tool, rc)
        extra = {}
        if doc is not None:
            extra["error_kind"] = doc["error"].get("kind")
        self.module.fail_json(msg=message, rc=rc, cmd=argv, stdout=out, stderr=err, **extra)

    def check_version(self, minimum=None):
        """Runs `TOOL --version` (`portable 0.1.0`); fails the task if the tool
        is older than `minimum` (a tuple, default this object's) or its version
        cannot be read. Returns the version as a tuple."""
        minimum = tuple(self.minimum if minimum is None else minimum)
        wanted = _dotted(minimum)
        argv = [self.path, "--version"]
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            self.module.fail_json(
                msg="%s --version exited with status %d (%s); this collection needs wharf %s or newer"
                % (self.tool, rc, _line(err) or _line(out) or "no message", wanted),
                rc=rc, cmd=argv, stdout=out, stderr=err)
        version = parse_version(out)
        if version is None:
            self.module.fail_json(
                msg="%s --version printed no version (%r); this collection needs wharf %s or newer"
                % (self.tool, out.strip()[:QUOTED], wanted),
                rc=rc, cmd=argv, stdout=out, stderr=err)
        if version < minimum:
            self.module.fail_json(
                msg="%s is wharf %s, older than %s, the oldest this collection works with"
                % (self.tool, _dotted(version), wanted),
                cmd=argv, version=_dotted(version), minimum=wanted)
        self.version = version
        return version

    def _argv(self, args):
        if self.version is None:
            self.check_version()
        return [self.path, "--json"] + args

    def _parse(self, args, argv, rc, out, err):
        try:
            return parse(out)
        except ValueError:
            self.module.fail_json(
                msg="%s: printed no JSON document: %s" % (" ".join([self.tool] + args), out.strip()[:QUOTED]),
                rc=rc, cmd=argv, stdout=out, stderr=err)
        return None  # not reached: fail_json exits


def parse(text):
    """The JSON document wharf printed: None if it printed nothing. wharf
    prints a document on one line, so if the whole text is not one, its last
    line may be (after lines of something else). Raises ValueError when there
    is no JSON document."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        last = text.splitlines()[-1].strip()
        if last == text or not last.startswith(("{", "[")):
            raise
        return json.loads(last)


def require(module, record, keys, what):
    """`record` if it is a dict with all `keys`; else the task fails, naming
    `what` (the command whose answer it is) and the missing key."""
    hint = "(is wharf too old or too new for this collection?)"
    if not isinstance(record, dict):
        missing = list(keys)[:1]
        if not missing:
            module.fail_json(msg="%s: wharf's answer is not an object %s" % (what, hint))
    else:
        missing = [key for key in keys if key not in record]
    if missing:
        module.fail_json(msg="%s: wharf's answer has no '%s' %s" % (what, missing[0], hint))
    return record


def parse_version(text):
    """(major, minor, patch) from `TOOL --version`'s `portable 0.1.0` (a
    pre-release or build suffix, `0.2.0-rc.1`, counts as its release); None if
    there is none."""
    for line in (text or "").splitlines():
        for word in line.split():
            found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.~][0-9A-Za-z.+-]*)?$", word)
            if found:
                return tuple(int(part or 0) for part in found.groups())
    return None


def error_message(doc, err, tool):
    """wharf's message for a failure: that of its JSON error document `doc`
    (or of one on stderr), else its `tool: message` line on stderr (or the
    first line there); None if it said nothing."""
    doc = doc if _is_error(doc) else _error_document(err)
    if doc is not None:
        message = doc["error"].get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    lines = [line.strip() for line in (err or "").splitlines() if line.strip() and not _error_document(line)]
    if not lines:
        return None
    own = [line for line in lines if line.startswith(tool + ": ")]
    return own[-1] if own else lines[0]


def _is_error(doc):
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict)


def _error_document(text):
    """wharf's `{"error": {...}}` document in `text`, or None."""
    try:
        doc = parse(text)
    except ValueError:
        return None
    return doc if _is_error(doc) else None


def _line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def _dotted(version):
    return ".".join(str(part) for part in version)


def systemctl(module, *args):
    """Runs systemctl; fails the task with its message if it fails."""
    argv = [module.get_bin_path("systemctl", required=True)] + list(args)
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="systemctl %s: %s" % (" ".join(args), err.strip() or out.strip()), rc=rc, cmd=argv)
    return out
