from vdno.admin.cli import app

app(prog_name="vdno-admin")
