"""`python -m simulator` = `vdno-sim`."""

from simulator.cli import app

app(prog_name="vdno-sim")
