"""Bench (and officer) settings: command-line flags over the environment over a TOML file (`vdno-server init`
writes clients/<id>.toml; --config, else the file VDNO_BENCH_CONFIG or VDNO_ADMIN_CONFIG names). Paths in
the file are relative to the file."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdno.client.errors import BenchError
from vdno.client.tls import ClientTls, TlsSetupError, load_client_tls

# key -> environment variable that overrides the file (flags override both)
ENVIRONMENT = {
    "server": "VDNO_SERVER",
    "server_name": "VDNO_SERVER_NAME",
    "sim": "VDNO_SIM",
    "dcc": "VDNO_DCC",
}
# [section] of the settings file -> the environment variable naming the file when --config is not given
CONFIG_ENVIRONMENT = {"bench": "VDNO_BENCH_CONFIG", "admin": "VDNO_ADMIN_CONFIG"}
PATH_KEYS = ("ca", "cert", "key", "save_commands")
KNOWN_KEYS = ("server", "server_name", "ca", "cert", "key", "sim", "dcc", "save_commands")


class SettingsError(BenchError):
    """The bench's settings are missing or wrong; the message names the key and where it came from."""


def host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{what} {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class BenchSettings:
    server: str  # HOST:PORT of the custodian
    ca: Path  # TLS CA certificate (PEM)
    cert: Path  # bench client certificate (PEM)
    key: Path  # bench client key (PEM)
    server_name: str | None = None  # TLS server name override
    sim: str | None = None  # HOST:PORT of the device transport (simulator tray)
    dcc: str | None = None  # URL of the DCC gateway that adds the ACB-SMD MAC to hand-out commands
    save_commands: Path | None = None

    @classmethod
    def load(
        cls,
        config: Path | None,
        flags: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        section: str = "bench",
    ) -> BenchSettings:
        """Flags (None = not given) over `config` over the environment. SettingsError naming what is missing
        or unusable."""
        env = os.environ if environ is None else environ
        file_values: dict[str, Any] = {}
        base = Path.cwd()
        source = "--config"
        if config is None and env.get(CONFIG_ENVIRONMENT.get(section, "")):
            source = CONFIG_ENVIRONMENT[section]
            config = Path(env[source])
        if config is not None:
            try:
                with config.open("rb") as handle:
                    document = tomllib.load(handle)
            except OSError as exc:
                raise SettingsError(f"cannot read {source} {config}: {exc.strerror or exc}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{source} {config} is not valid TOML: {exc}") from exc
            table = document.get(section, document)
            if not isinstance(table, dict):
                raise SettingsError(f"{source} {config}: [{section}] is not a table")
            file_values = {str(k).replace("-", "_"): v for k, v in table.items()}
            unknown = sorted(set(file_values) - set(KNOWN_KEYS) - {section})
            if unknown:
                raise SettingsError(f"{source} {config}: unknown keys {', '.join(unknown)}")
            base = config.resolve().parent
        values: dict[str, Any] = {}
        for key in KNOWN_KEYS:
            flag = flags.get(key)
            if flag is not None:
                values[key] = flag
            elif key in ENVIRONMENT and env.get(ENVIRONMENT[key]):
                values[key] = env[ENVIRONMENT[key]]
            elif key in file_values:
                value = file_values[key]
                if not isinstance(value, str) or not value:
                    raise SettingsError(f"{source} {config}: {key} must be a non-empty string")
                values[key] = base / value if key in PATH_KEYS and not Path(value).is_absolute() else value
        missing = [f"--{k.replace('_', '-')}" for k in ("server", "ca", "cert", "key") if not values.get(k)]
        if missing:
            variable = CONFIG_ENVIRONMENT.get(section)
            named = f", or in the file {variable} names" if variable else ""
            raise SettingsError(f"missing {', '.join(missing)} (give them as flags, in --config FILE{named})")
        host_port(str(values["server"]), "--server")
        if values.get("sim"):
            host_port(str(values["sim"]), "--sim")
        return cls(
            server=str(values["server"]),
            ca=Path(values["ca"]),
            cert=Path(values["cert"]),
            key=Path(values["key"]),
            server_name=values.get("server_name"),
            sim=values.get("sim"),
            dcc=values.get("dcc"),
            save_commands=None if values.get("save_commands") is None else Path(values["save_commands"]),
        )

    def load_tls(self) -> ClientTls:
        """The TLS files, read and checked (client.tls.load_client_tls); SettingsError naming the file."""
        try:
            return load_client_tls(self.ca, self.cert, self.key)
        except TlsSetupError as exc:
            raise SettingsError(str(exc)) from None

    def read_tls(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEM bytes, checked; SettingsError naming the file at fault."""
        tls = self.load_tls()
        return tls.ca_pem, tls.cert_pem, tls.key_pem

    def server_address(self) -> tuple[str, int]:
        return host_port(self.server, "--server")

    def require_sim(self) -> tuple[str, int]:
        if not self.sim:
            raise SettingsError("missing --sim (the device transport, on the command line or in --config)")
        return host_port(self.sim, "--sim")
