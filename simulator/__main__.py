"""`python -m vdno.simulator` = `vdno-sim`."""

from vdno.simulator.cli import app

app(prog_name="vdno-sim")
