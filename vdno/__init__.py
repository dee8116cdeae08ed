"""vdno: the vanilla DNO custodian. One import namespace over the repository's folders (pyproject.toml maps
vdno.server to server/, vdno.client to client/, ...); vdno.v1 holds the generated gRPC stubs."""
