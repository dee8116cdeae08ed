"""`python -m labdcc` = `vdno-labdcc`."""

from labdcc.cli import app

app(prog_name="vdno-labdcc")
