"""Importing the paths loads only what they use: not the CLI (typer), not the engine."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT, SUBPROCESS_ENV

# what is loaded after importing realuid.paths, then (the calibration) after importing the CLI as well
PROBE = """
import json, sys
def heavy():
    return sorted(m for m in sys.modules
                  if m == "typer" or m.startswith(("typer.", "realuid.cli", "realuid.engine")))
import realuid.paths
after_paths = heavy()
import realuid.cli.app
print(json.dumps([after_paths, heavy()]))
"""


def test_importing_realuid_paths_loads_neither_typer_nor_the_cli_nor_the_engine():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    after_paths, after_cli = json.loads(proc.stdout)
    assert after_paths == [], after_paths
    # calibration: the same probe sees them once the CLI is imported
    assert "typer" in after_cli and "realuid.cli" in after_cli, after_cli
