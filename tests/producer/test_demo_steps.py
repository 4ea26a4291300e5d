"""The demo's closing advice: a line the user pastes into their own shell."""
from __future__ import annotations

import os
import subprocess

import pytest

from producer import demo


def test_the_export_line_keeps_the_users_own_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(demo.PACKAGES_ROOT))  # as scripts/_env.sh runs it from a clone
    line = demo.next_steps().strip().splitlines()[-1].strip()
    assert line.startswith("export PATH=")
    shell = subprocess.run(["bash", "-c", f'{line}; printf %s "$PYTHONPATH"'], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": "/users/own"}, check=True)
    assert shell.stdout == f"{demo.PACKAGES_ROOT}:/users/own"
    shell = subprocess.run(["bash", "-c", f'{line}; printf %s "$PYTHONPATH"'], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"]}, check=True)
    assert shell.stdout == str(demo.PACKAGES_ROOT)
