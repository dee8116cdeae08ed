"""One vdno-server per TCP port on a machine. A server's own worker processes share its port
(SO_REUSEPORT); no other server may: the kernel would silently split the connections between them.

`vdno-server serve` claims a fixed port before it does anything else, and holds the claim while it runs:
the claim is an abstract Unix socket named after the port (Linux; one per network namespace, like the
port). The kernel gives a name to one socket at a time and frees it when its process ends, however it
ends, so there is no file to go stale. A single server process binds its port without SO_REUSEPORT, so
that nothing else shares it either."""

from __future__ import annotations

import socket

from vdno.server.config import ConfigError

CLAIM_NAME = "\0vdno-server/tcp-port/{port}"


class PortHeld(ConfigError):
    """Another vdno-server holds the port."""


class PortClaim:
    """The claim on one TCP port, held until close() or the end of the process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(CLAIM_NAME.format(port=port))
        except OSError as exc:
            self._socket.close()
            raise PortHeld(
                f"port {port} is already held by another vdno-server on this machine; give each server "
                "a port of its own (only a server's own worker processes share its port)"
            ) from exc

    def close(self) -> None:
        self._socket.close()


def listen_port(listen: str) -> int:
    """The port of a "host:port" listen address ([::]:50051 too)."""
    _, _, port = listen.rpartition(":")
    try:
        return int(port)
    except ValueError:
        raise ConfigError(f"[server] listen must be host:port, not {listen!r}") from None


def claim_port(listen: str) -> PortClaim | None:
    """The claim on the fixed port of `listen` (PortHeld if another server has it); None for port 0, where
    the kernel picks a port that nothing holds."""
    port = listen_port(listen)
    return PortClaim(port) if port else None


def check_shareable(listen: str) -> None:
    """ConfigError unless the worker processes can bind `listen` with SO_REUSEPORT: a socket bound without
    it (another program, a single-process server) holds the port. Probed by binding a socket with the
    options gRPC sets, then closing it, before any worker starts."""
    host = listen.rpartition(":")[0]
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, listen_port(listen), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {listen}: the port is in use") from exc
