"""Checks shared by the reliability suites: nothing lost, one clear error line."""

from __future__ import annotations

import hashlib
from pathlib import Path


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders)."""
    out = {}
    for p in paths:
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_user_error(r, *fragments: str) -> str:
    """Exit 2, no traceback, and the last line is the one ``error:`` line holding
    ``fragments``; returns that line."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), r.output
    assert sum(line.startswith("error:") for line in lines) == 1, r.output
    for fragment in fragments:
        assert fragment in lines[-1], r.output
    return lines[-1]
