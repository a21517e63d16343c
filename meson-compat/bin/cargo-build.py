#!/usr/bin/env python3
"""Builds wharf's binaries and its man page and completion generator with
one cargo invocation, then links them into meson's build directory.

meson runs this on every build: cargo knows what is stale, and when nothing
is, it takes a fraction of a second. Where cargo put each artifact is taken
from its JSON messages, so a cross target or a custom profile needs no
guessing here.

usage: cargo-build.py CARGO MANIFEST TARGET_DIR PROFILE OUTDIR
"""

import json
import os
import shutil
import subprocess
import sys

# (target kind, target name) -> the name meson expects in OUTDIR.
WANTED = {
    ("bin", "portable"): "portable",
    ("bin", "machine"): "machine",
    ("bin", "wharfd"): "wharfd",
    ("example", "gen"): "wharf-gen",
}


def main():
    cargo, manifest, target_dir, profile, outdir = sys.argv[1:]
    command = [
        cargo, "build", "--locked",
        "--manifest-path", manifest,
        "--target-dir", target_dir,
        "--profile", profile,
        "--bins", "--example", "gen",
        # Diagnostics rendered on stderr as usual; JSON on stdout for us.
        "--message-format=json-render-diagnostics",
    ]
    found = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as cargo_process:
        for line in cargo_process.stdout:
            message = json.loads(line)
            if message.get("reason") != "compiler-artifact" or not message.get("executable"):
                continue
            target = message["target"]
            for kind in target["kind"]:
                name = WANTED.get((kind, target["name"]))
                if name:
                    found[name] = message["executable"]
    if cargo_process.returncode != 0:
        sys.exit(f"cargo-build.py: {' '.join(command)} failed ({cargo_process.returncode})")
    missing = sorted(set(WANTED.values()) - set(found))
    if missing:
        sys.exit(f"cargo-build.py: cargo did not report building {', '.join(missing)}")
    for name, source in found.items():
        link(source, os.path.join(outdir, name))


def link(source, dest):
    """A hard link costs nothing, even for 100 MB debug binaries; a copy
    when the build directory is on another file system."""
    if os.path.lexists(dest):
        os.unlink(dest)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


if __name__ == "__main__":
    main()
