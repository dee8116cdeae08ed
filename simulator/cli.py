"""`vdno-sim serve`: a tray of simulated SMETS2 devices on loopback, speaking the frames.py protocol."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import typer

from simulator.errors import ProfileError
from simulator.tray import Tray, TrayServer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="vdno SMETS2 device simulator")


@app.callback()
def main() -> None:
    """vdno SMETS2 device simulator."""


@app.command()
def serve(
    profiles: Path | None = typer.Option(None, "--profiles", help="folder of device profile *.json files"),
    tray: Path | None = typer.Option(None, "--tray", help='tray file {"devices": [...]}'),
    port: int = typer.Option(0, "--port", help="TCP port on 127.0.0.1 (0 = any free port)"),
    idle_timeout: float = typer.Option(
        30.0, "--idle-timeout", help="seconds before an idle connection closes"
    ),
) -> None:
    """Serve a tray of devices on 127.0.0.1; prints `vdno-sim listening on 127.0.0.1:PORT` first."""
    if (profiles is None) == (tray is None):
        typer.echo("give exactly one of --profiles DIR or --tray FILE", err=True)
        raise typer.Exit(2)
    try:
        if profiles is not None:
            devices = Tray.from_directory(profiles)
        else:
            assert tray is not None
            devices = Tray.from_tray_file(tray)
    except ProfileError as exc:
        typer.echo(f"vdno-sim: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not len(devices):
        typer.echo("vdno-sim: no device profiles found", err=True)
        raise typer.Exit(1)
    server = TrayServer(devices, port=port, idle_timeout=idle_timeout)
    try:
        bound = server.start()
    except OSError as exc:
        typer.echo(f"vdno-sim: cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    # Handlers before the 'listening' line: a caller may send SIGTERM as soon as it reads it.
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.stdout.write(f"vdno-sim listening on 127.0.0.1:{bound}\n")
    sys.stdout.write(f"devices: {', '.join(devices.device_ids())}\n")
    sys.stdout.flush()

    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
