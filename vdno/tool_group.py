"""The command group every vdno tool's typer app uses (`typer.Typer(cls=ToolGroup)`): a usage error that
the command-line parser reports itself (an unknown option, a missing argument, a bad value) also prints,
when `--json` is among the arguments, the JSON error object of vdno/exit_codes.py on stdout, so that a
script reading stdout always gets one JSON document (README "Exit codes"). The parser still prints its
usage text on stderr and exits 2."""

from __future__ import annotations

import json
import sys
from typing import Any

from typer.core import TyperGroup

from vdno.exit_codes import USAGE, error_document


def _report_usage_error(exc: Exception, args: list[str]) -> None:
    # A click UsageError (typer vendors click, privately: matched by its contract, exit code 2 and a
    # message, not by class).
    message = getattr(exc, "format_message", None)
    if "--json" in args and getattr(exc, "exit_code", None) == USAGE and callable(message):
        sys.stdout.write(json.dumps(error_document(str(message()), USAGE), indent=2) + "\n")
        sys.stdout.flush()


class ToolGroup(TyperGroup):
    """A TyperGroup whose parser's usage errors are JSON error objects too under --json."""

    _arguments: list[str] = []

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        self._arguments = list(args)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except Exception as exc:
            _report_usage_error(exc, self._arguments)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # a sub-command's parsing, or a typer.BadParameter raised by one
            _report_usage_error(exc, self._arguments)
            raise
