"""The CLI frame: help, version, and the error convention (exit codes, no traceback)."""

import subprocess
import sys

import pytest

from frcnn_cli import __version__


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.output.strip() == f"frcnn {__version__}"


def test_help_lists_groups(cli):
    r = cli("--help")
    assert r.exit_code == 0
    assert "recipe" in r.output


@pytest.mark.parametrize("group", ["recipe"])
def test_group_help(cli, group):
    r = cli(group, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_bad_recipe_is_one_line_exit_2(cli):
    r = cli("recipe", "show", "shapez")
    assert r.exit_code == 2
    assert "unknown recipe 'shapez'; did you mean 'shapes'" in r.output
    assert "Traceback" not in r.output


def test_bad_override_exit_2(cli):
    r = cli("recipe", "show", "shapes", "--set", "rpn.nms_tresh=0.5")
    assert r.exit_code == 2
    assert "did you mean 'rpn.nms_thresh'" in r.output
    assert "Traceback" not in r.output


def test_recipe_list_names_a_broken_recipe_and_still_lists_the_others(cli, tmp_path,
                                                                      monkeypatch):
    (tmp_path / "mine.yaml").write_text("description: |\n  Mine.\n  More.\n"
                                        "model: {backbone: tiny}\n")
    (tmp_path / "broken.yaml").write_text("rpn: {nms_tresh: 0.5}\n")
    monkeypatch.setenv("FRCNN_RECIPE_PATH", str(tmp_path))
    r = cli("recipe", "list")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:] for line in r.output.splitlines()
            if line.split() and line.split()[0] in ("mine", "broken", "shapes")}
    assert rows["mine"] == ["│", "tiny", "│", "Mine."]
    assert rows["broken"][:2] == ["│", "invalid"]
    assert "shapes" in rows  # the shipped recipes are still listed


def test_recipe_show_applies_override(cli):
    r = cli("recipe", "show", "shapes", "--set", "solver.lr=0.123")
    assert r.exit_code == 0 and "lr: 0.123" in r.output


def test_unexpected_error_exit_1_with_hint(cli, monkeypatch):
    from frcnn_cli import config

    def boom(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(config, "load_recipe", boom)
    r = cli("recipe", "show", "shapes")
    assert r.exit_code == 1
    assert "unexpected ZeroDivisionError" in r.output and "--debug" in r.output
    assert "Traceback" not in r.output
    r = cli("--debug", "recipe", "show", "shapes")
    assert r.exit_code == 1 and "Traceback" in r.output


def test_a_stop_while_failing_keeps_the_error(cli, monkeypatch):
    """torchrun's SIGTERM follows a lost process while the run is saying so: the user reads
    why the run stopped (and how to resume), not "terminated"."""
    from frcnn_cli import config
    from frcnn_cli.errors import FrcnnError
    from frcnn_cli.interrupts import Terminated

    def failing(*a, **k):
        try:
            raise FrcnnError("another process of the run stopped; Resume with: ...")
        finally:
            raise Terminated  # the signal handler, run while the error unwinds

    monkeypatch.setattr(config, "load_recipe", failing)
    r = cli("recipe", "show", "shapes")
    assert r.exit_code == 2 and "another process of the run stopped" in r.output, r.output

    def stopped(*a, **k):
        raise Terminated

    monkeypatch.setattr(config, "load_recipe", stopped)
    r = cli("recipe", "show", "shapes")
    assert r.exit_code == 143 and "terminated (SIGTERM)" in r.output, r.output


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "frcnn_cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"frcnn {__version__}"


def test_closed_pipe_stops_quietly():
    # `frcnn recipe show shapes | head -1`: the reader is gone before the command writes.
    proc = subprocess.Popen([sys.executable, "-m", "frcnn_cli", "recipe", "show", "shapes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == ""
