"""Conventions every vdno tool keeps, run through the installed entry points: --version, -h as well as --help
on every tool and command, --json on every command, one exit-code table (the server's and the lab stand-ins'
copies agree with the client's, and the README documents it once), and a tray file whose every bad line is
reported at once (the JSON error object on stdout, exit 2, nothing done)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from vdno import exit_codes
from vdno.client import error_codes
from vdno.tool_group import ToolGroup

BIN = Path(sys.executable).parent
README = Path(__file__).resolve().parents[2] / "README.md"
TOOLS = ("vdno-server", "vdno-bench", "vdno-admin", "vdno-sim", "vdno-labdcc")
# Every command of every tool: each answers -h and takes --json.
COMMANDS = (
    ("vdno-server", "serve"),
    ("vdno-server", "init"),
    ("vdno-server", "verify-audit"),
    ("vdno-bench", "inspect"),
    ("vdno-bench", "hand-out"),
    ("vdno-bench", "rotate"),
    ("vdno-bench", "cancel"),
    ("vdno-bench", "keygen"),
    ("vdno-bench", "hand-in", "order"),
    ("vdno-bench", "hand-in", "apply"),
    ("vdno-sim", "serve"),
    ("vdno-sim", "make-tray"),
    ("vdno-labdcc", "init"),
    ("vdno-labdcc", "smki-issue"),
    ("vdno-labdcc", "answer"),
    ("vdno-labdcc", "serve"),
    ("vdno-admin", "audit", "verify"),
    ("vdno-admin", "audit", "export"),
    ("vdno-admin", "audit", "checkpoint"),
)
# vdno-admin's --json is the tool's own option (it applies to every command)
ADMIN_COMMANDS = (("fleet", "summary"), ("fleet", "holding"), ("generations", "list"), ("hand-in", "import"))


# Settings a command never gets to use (it stops at the tray file first)
UNUSED_SETTINGS = ("--server", "127.0.0.1:9", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem")
UNUSED_SETTINGS += ("--sim", "127.0.0.1:9")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_has_version_and_short_help(tool: str) -> None:
    version = run(tool, "--version")
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(rf"{tool} \d+\.\d+\.\d+\n", version.stdout), version.stdout
    for flag in ("-h", "--help"):
        helped = run(tool, flag)
        assert helped.returncode == 0, helped.stderr
        assert "Usage:" in helped.stdout and "--version" in helped.stdout


def app_of(tool: str) -> typer.Typer:
    """The typer app behind an entry point ([project.scripts]), for the in-process runs of -h."""
    module, _, name = {
        "vdno-server": "vdno.server.main:app",
        "vdno-bench": "vdno.client.cli:app",
        "vdno-admin": "vdno.admin.cli:app",
        "vdno-sim": "vdno.simulator.cli:app",
        "vdno-labdcc": "vdno.labdcc.cli:app",
    }[tool].partition(":")
    app: typer.Typer = getattr(importlib.import_module(module), name)
    return app


def leaf_commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command that runs something, under a tool's group."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from leaf_commands(sub, (*path, name))
    else:
        yield path, command


def test_the_lists_above_name_every_command_of_every_tool() -> None:
    """A command added later is checked too: COMMANDS is every command of the tools, and every vdno-admin
    command sits under the tool's own --json."""
    found = {
        path
        for tool in TOOLS
        for path, _ in leaf_commands(typer.main.get_command(app_of(tool)), (tool,))
        if tool != "vdno-admin" or path[1] == "audit"
    }
    assert found == set(COMMANDS)
    admin = typer.main.get_command(app_of("vdno-admin"))
    assert any("--json" in param.opts for param in admin.params)
    admin_commands = {path for path, _ in leaf_commands(admin, ())}
    assert set(ADMIN_COMMANDS) < admin_commands and len(admin_commands) > 20


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_answers_short_help_and_takes_json(command: tuple[str, ...]) -> None:
    helped = CliRunner().invoke(app_of(command[0]), [*command[1:], "-h"])
    assert helped.exit_code == 0, helped.output
    assert "--json" in helped.output


@pytest.mark.parametrize(
    "command", COMMANDS + tuple(("vdno-admin", "--json", *c) for c in ADMIN_COMMANDS), ids=" ".join
)
def test_a_usage_error_under_json_is_a_json_error_object_on_stdout(command: tuple[str, ...]) -> None:
    json_flag = () if "--json" in command else ("--json",)
    done = CliRunner().invoke(app_of(command[0]), [*command[1:], *json_flag, "--no-such-flag"])
    assert done.exit_code == 2, done.output
    error = json.loads(done.stdout)
    assert error == {"error_code": "USAGE_ERROR", "error": "No such option: --no-such-flag", "exit_code": 2}
    assert "No such option: --no-such-flag" in done.stderr  # the parser's own usage text stays on stderr
    plain = CliRunner().invoke(
        app_of(command[0]), [*(c for c in command[1:] if c != "--json"), "--no-such-flag"]
    )
    assert plain.exit_code == 2 and plain.stdout == ""


def test_every_tool_app_reports_usage_errors_as_json() -> None:
    for tool in TOOLS:
        assert isinstance(typer.main.get_command(app_of(tool)), ToolGroup), tool


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_every_admin_command_answers_short_help(command: tuple[str, ...]) -> None:
    helped = CliRunner().invoke(app_of("vdno-admin"), [*command, "-h"])
    assert helped.exit_code == 0, helped.output
    assert "Usage: vdno-admin" in helped.output


def test_every_tool_takes_its_exit_codes_from_the_one_table() -> None:
    # by module, not by folder: the wheel's tests run where no source folder is importable
    for package in ("client", "server", "admin", "simulator", "labdcc"):
        assert importlib.util.find_spec(f"vdno.{package}.exit_codes") is None, package
    for module in ("client.cli", "server.main", "admin.console", "simulator.cli", "labdcc.cli"):
        spec = importlib.util.find_spec(f"vdno.{module}")
        assert spec is not None and spec.origin is not None, module
        source = Path(spec.origin).read_text(encoding="utf-8")
        assert "from vdno.exit_codes import fail_command" in source, module
        assert 'json.dumps({"error_code"' not in source, module


def test_an_error_document_names_its_code_and_refuses_an_exit_code_that_is_no_error() -> None:
    assert exit_codes.error_document("no tray", exit_codes.USAGE) == {
        "error_code": "USAGE_ERROR",
        "error": "no tray",
        "exit_code": 2,
    }
    assert exit_codes.error_document("x", exit_codes.REFUSED, "AUDIT_LOG_BROKEN", ("a", "b")) == {
        "error_code": "AUDIT_LOG_BROKEN",
        "error": "x",
        "exit_code": 1,
        "problems": ["a", "b"],
    }
    assert exit_codes.error_document("x", exit_codes.UNAVAILABLE)["error_code"] == "UNAVAILABLE"
    assert exit_codes.error_document("x", exit_codes.UNVERIFIED)["error_code"] == "UNVERIFIED"
    assert exit_codes.error_document("x", exit_codes.REFUSED)["error_code"] == "REFUSED"
    with pytest.raises(ValueError, match="exit code 0 is not an error"):
        exit_codes.error_document("x", exit_codes.OK)


def test_a_stopped_command_prints_the_object_then_one_line_per_problem(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        exit_codes.fail_command(
            "vdno-x", "2 problem(s)", exit_codes.USAGE, json_output=True, problems=("a", "b")
        )
    assert stopped.value.code == exit_codes.USAGE
    out, err = capsys.readouterr()
    assert json.loads(out)["problems"] == ["a", "b"]
    assert err == "vdno-x: 2 problem(s)\nvdno-x:   a\nvdno-x:   b\n"
    with pytest.raises(SystemExit):
        exit_codes.fail_command("vdno-x", "down", exit_codes.UNAVAILABLE, json_output=False)
    out, err = capsys.readouterr()
    assert out == "" and err == "vdno-x: down\n"


def test_the_readme_documents_the_exit_code_table_once() -> None:
    assert list(exit_codes.EXIT_CODES.values()) == list(range(len(exit_codes.EXIT_CODES)))
    text = README.read_text(encoding="utf-8")
    assert text.count("## Exit codes") == 1
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for name, code in exit_codes.EXIT_CODES.items():
        assert re.search(rf"^\| {code} \| `{name}` \|", table, re.MULTILINE), name


def test_the_readme_documents_every_bench_error_code() -> None:
    text = README.read_text(encoding="utf-8")
    errors = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    for code in error_codes.BENCH_CODES:
        assert f"`{code}`" in errors, code


def test_a_tray_file_reports_every_bad_line_and_duplicate_at_once(tmp_path: Path) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text(
        "# device area\n"
        "00db5eed00000001 12\n"
        "00db5eed0000000z 12\n"  # not an EUI-64
        "00db5eed00000002 9\n"  # not a DNO area
        "00DB5EED00000001 14\n"  # the first line's meter again
        "00db5eed00000003\n"  # no area
        "00db5eed00000004 13\n"
    )
    # Nothing is contacted: the tray is refused before the settings' TLS files are read.
    done = run(
        "vdno-bench", "hand-out", "--tray", str(tray), "--json",
        *UNUSED_SETTINGS,
    )  # fmt: skip
    assert done.returncode == exit_codes.USAGE
    error = json.loads(done.stdout)
    assert error["error_code"] == "TRAY_INVALID" and error["exit_code"] == exit_codes.USAGE
    assert error["problems"] == [
        "line 3: device '00db5eed0000000z': EUI-64 '00db5eed0000000z' is not 16 hex digits "
        "(optionally separated by '-', ':' or ' ')",
        "line 4: area 9 is not a DNO area (10-23)",
        "line 5: device 00db5eed00000001 is already on line 2",
        "line 6: expected 'DEVICE AREA' or 'device,area', got '00db5eed00000003'",
    ]
    assert done.stderr.splitlines()[0] == f"vdno-bench: tray file {tray}: 4 bad lines, nothing done"
    assert len(done.stderr.splitlines()) == 5
    assert not list(tmp_path.glob("*.journal"))  # no run was started


def test_a_hand_in_tray_flags_duplicates_too(tmp_path: Path) -> None:
    tray = tmp_path / "tray.txt"
    tray.write_text("00db5eed00000001\n00db5eed00000002 12\n00db5eed00000001 14\n")
    done = run(
        "vdno-bench", "hand-in", "order", "--tray", str(tray),
        *UNUSED_SETTINGS,
    )  # fmt: skip
    assert done.returncode == exit_codes.USAGE and done.stdout == ""
    assert "line 3: device 00db5eed00000001 is already on line 1" in done.stderr


def test_a_settings_error_is_a_json_error_object_on_stdout(tmp_path: Path) -> None:
    done = run("vdno-bench", "hand-out", "--device", "00db5eed00000001", "--area", "12", "--json")
    assert done.returncode == exit_codes.USAGE
    error = json.loads(done.stdout)
    assert error["error_code"] == "USAGE_ERROR" and "missing --server" in error["error"]
    assert done.stderr.startswith("vdno-bench: missing --server")


def test_inspect_without_a_key_is_unverified_in_the_table(tmp_path: Path) -> None:
    assert exit_codes.UNVERIFIED == 4
    done = run("vdno-bench", "inspect", "not-hex", "--keystore", str(tmp_path), "--json")
    assert done.returncode == exit_codes.USAGE  # unreadable input is a usage error
    assert json.loads(done.stdout)["error_code"] == "USAGE_ERROR"
