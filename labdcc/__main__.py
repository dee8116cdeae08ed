"""`python -m vdno.labdcc` = `vdno-labdcc`."""

from vdno.labdcc.cli import app

app(prog_name="vdno-labdcc")
