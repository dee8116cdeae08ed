"""`vdno-admin`: the security officers' command-line client of the custody API."""
