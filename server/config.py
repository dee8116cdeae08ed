"""Settings: built once at start-up from a TOML file plus environment overrides, then passed down.

The file is validated as a whole against the schema below (one frozen model per TOML table, unknown keys
and tables refused) and every problem is reported at once, each naming its key:
`[server] listen: port 99999 is outside 0-65535`. A value from the environment is named by its variable:
`VDNO_LISTEN (overrides [server] listen): ...`. With check_files, every file the settings name is read
and checked now (certificates and keys parse, the TLS key is the certificate's), not on first use.

Another table is one more model and one more field of Settings (and a line of ENVIRONMENT for an
override); the README's Configuration table documents each key."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from vdno.gbcs.errors import GbcsError
from vdno.gbcs.smki import load_certificate
from vdno.server.domain.checkpoint import load_public_key
from vdno.server.domain.errors import AuditDocumentInvalid, VdnoError


class ConfigError(VdnoError):
    """The configuration file or environment is wrong; each problem names its key."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = problems


# variable -> ([table], key) it overrides; the variables marked here may be set to "" (a value), the others
# count only when not empty.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "VDNO_LISTEN": ("server", "listen"),
    "VDNO_HEALTH_LISTEN": ("server", "health_listen"),
    "VDNO_PROCESSES": ("server", "processes"),
    "VDNO_DATABASE_URL": ("database", "url"),
    "VDNO_METRICS_LISTEN": ("metrics", "listen"),
}
# "" disables the health or metrics listener
EMPTY_IS_A_VALUE = frozenset({"VDNO_HEALTH_LISTEN", "VDNO_METRICS_LISTEN"})
LOG_LEVELS = ("debug", "info", "warning", "error")
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _problem(message: str, key: str | None = None) -> PydanticCustomError:
    """A problem with the value being validated (or, from a table's own check, with `key` of the table)."""
    return PydanticCustomError("vdno", message, {"key": key} if key else None)


# -- what the validators are told: where relative paths start, and whether to read the files -------------


def _base(info: ValidationInfo) -> Path | None:
    context = info.context or {}
    base = context.get("base")
    return base if isinstance(base, Path) else None


def _checking_files(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("check_files"))


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    environ = (info.context or {}).get("environ")
    return environ if isinstance(environ, Mapping) else {}


# -- value types ------------------------------------------------------------------------------------------


def host_port_problem(value: str) -> str | None:
    """What is wrong with `value` as a HOST:PORT address, or None."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"must be HOST:PORT (port 0 picks a free one) — got {value!r}"
    if int(port) > 65535:
        return f"port {port} is outside 0-65535"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return f"must be HOST:PORT with an IPv6 host in brackets, [::1]:PORT — got {value!r}"
    return None


def _host_port(value: str) -> str:
    problem = host_port_problem(value)
    if problem is not None:
        raise _problem(problem)
    return value


def _host_port_or_empty(value: str) -> str:
    return value if value == "" else _host_port(value)


HostPort = Annotated[str, AfterValidator(_host_port)]
HostPortOrEmpty = Annotated[str, AfterValidator(_host_port_or_empty)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


def _path_of(value: object, info: ValidationInfo) -> Path:
    """A TOML string naming a file; relative to the config file's folder."""
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value:
        path = Path(value)
    else:
        raise _problem(f"must be a path (a non-empty string) — got {_shown(value)}")
    base = _base(info)
    return path if path.is_absolute() or base is None else base / path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise _problem(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise _problem(f"cannot read {path}: {exc.strerror or exc}") from None


def _file_check(check: Callable[[Path, bytes], None] | None = None) -> Callable[[Path, ValidationInfo], Path]:
    """A validator that reads the file (and runs `check` on its bytes) when the settings check files."""

    def validate(path: Path, info: ValidationInfo) -> Path:
        if _checking_files(info):
            data = _read(path)
            if check is not None:
                check(path, data)
        return path

    return validate


def _pem_certificates(path: Path, data: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _problem(f"{path} holds no PEM certificate") from None


def _pem_private_key(path: Path, data: bytes) -> None:
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _problem(f"{path} is an encrypted key; vdno needs it unencrypted (protect the file)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _problem(f"{path} holds no PEM private key") from None


def _smki_certificate(path: Path, data: bytes) -> None:
    try:
        load_certificate(data)
    except GbcsError as exc:
        raise _problem(f"{path} is not an SMKI CA certificate: {exc}") from None


def _audit_public_key(path: Path, data: bytes) -> None:
    try:
        load_public_key(data)
    except AuditDocumentInvalid as exc:
        raise _problem(f"{path} is unusable: {exc}") from None


ConfigPath = Annotated[Path, BeforeValidator(_path_of)]
ReadableFile = Annotated[ConfigPath, AfterValidator(_file_check())]
PemCertificates = Annotated[ConfigPath, AfterValidator(_file_check(_pem_certificates))]
PemPrivateKey = Annotated[ConfigPath, AfterValidator(_file_check(_pem_private_key))]
SmkiCertificate = Annotated[ConfigPath, AfterValidator(_file_check(_smki_certificate))]
AuditPublicKey = Annotated[ConfigPath, AfterValidator(_file_check(_audit_public_key))]


def shown_database_url(url: URL) -> str:
    """The URL as it may be shown: its password (if any) as ***."""
    return url.render_as_string(hide_password=True)


def normalise_database_url(value: str, base: Path | None, check_files: bool) -> str:
    """The SQLAlchemy URL the store opens: sqlite:///FILE (relative to `base`) or postgresql+psycopg://...
    ValueError naming what is wrong (never echoing a password)."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "is not a SQLAlchemy URL (sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)"
        ) from None
    shown = value if url.password is None else shown_database_url(url)
    if url.drivername not in DATABASE_DRIVERS:
        hint = ", the driver vdno installs" if url.get_backend_name() == "postgresql" else ""
        raise ValueError(
            f"{shown}: dialect {url.drivername!r} is not supported; use sqlite:///FILE or "
            f"postgresql+psycopg://USER@HOST/DB (psycopg 3{hint})"
        )
    if url.get_backend_name() != "sqlite":
        return value
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ValueError(f"{shown}: the SQLite database must be a file, sqlite:///FILE")
    path = Path(database)
    if not path.is_absolute() and base is not None:
        path = base / path
    if check_files and not path.parent.is_dir():
        raise ValueError(f"{shown}: folder {path.parent} does not exist")
    return url.set(database=str(path)).render_as_string(hide_password=False)


def _database_url(value: str, info: ValidationInfo) -> str:
    try:
        return normalise_database_url(value, _base(info), _checking_files(info))
    except ValueError as exc:
        raise _problem(str(exc)) from None


def _label(value: str) -> str:
    if not 1 <= len(value.encode()) <= 32:
        raise _problem(f"must be 1 to 32 bytes (a PKCS#11 token label) — got {value!r}")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise _problem(f"must name an environment variable — got {value!r}")
    return value


def _pkcs11_uri(value: str) -> str:
    if not value.startswith("pkcs11:"):
        raise _problem(f"must be a PKCS#11 URI (pkcs11:...) — got {value!r}")
    return value


# -- the tables -------------------------------------------------------------------------------------------


class Table(BaseModel):
    """One TOML table: values of the declared types only (no "16" for 16), no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _processes(value: int, info: ValidationInfo) -> int:
    listen = info.data.get("listen")
    if value > 1 and isinstance(listen, str) and listen.rpartition(":")[2].lstrip("0") == "":
        raise _problem(f"{value} processes share a fixed port: [server] listen must not use port 0")
    return value


class ServerTable(Table):
    """[server]"""

    listen: HostPort = "127.0.0.1:50051"
    processes: Annotated[int, Field(ge=1), AfterValidator(_processes)] = 1
    threads: Annotated[int, Field(ge=1)] = 16
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The plaintext grpc.health.v1 listener for load balancers ("" disables it); probes run every
    # health_interval seconds.
    health_listen: HostPortOrEmpty = "127.0.0.1:0"
    health_interval: Seconds = 1.0


class DatabaseTable(Table):
    """[database]"""

    url: Annotated[str, AfterValidator(_database_url)]
    write_lock_wait: Seconds = 5.0  # seconds a write waits for the database's write lock (then UNAVAILABLE)


class TlsSettings(Table):
    """[tls]"""

    server_certificate: PemCertificates
    server_key: PemPrivateKey
    client_ca: PemCertificates  # CA that issues bench and officer client certificates

    @model_validator(mode="after")
    def _key_is_the_certificates(self, info: ValidationInfo) -> TlsSettings:
        if _checking_files(info) and not _same_key(self.server_certificate, self.server_key):
            raise _problem(
                f"{self.server_key} is not the key of server_certificate {self.server_certificate}",
                "server_key",
            )
        return self


def _pin_file(path: Path | None, info: ValidationInfo) -> Path | None:
    """Readable, unless the environment variable that hsm.pin_env names holds the PIN (it wins)."""
    pin_env = info.data.get("pin_env")
    if path is None or not _checking_files(info) or (pin_env and _environ(info).get(pin_env)):
        return path
    try:
        if not _read(path).strip():
            raise _problem(f"{path} is empty")
    except PydanticCustomError as exc:
        if not pin_env:
            raise
        raise _problem(f"{exc.message()}, and {pin_env} (hsm.pin_env) is not set") from None
    return path


def _not_before_first(value: float, info: ValidationInfo) -> float:
    first = info.data.get("reconnect_first")
    if isinstance(first, float) and value < first:
        raise _problem(f"must not be less than reconnect_first ({first:g}) — got {value:g}")
    return value


class HsmSettings(Table):
    """[hsm]"""

    module: ReadableFile
    token_label: Annotated[str, AfterValidator(_label)]
    pin_env: Annotated[str, AfterValidator(_env_name)] | None = None  # the PIN: this variable, else ...
    pin_file: Annotated[ConfigPath | None, AfterValidator(_pin_file)] = None  # ... this file; never argv
    softhsm_conf: ReadableFile | None = (
        None  # SoftHSM only: exported as SOFTHSM2_CONF before the module loads
    )
    # After a transient fault the signer reconnects at once, then after reconnect_first seconds, doubling
    # up to reconnect_max.
    reconnect_first: Seconds = 0.2
    reconnect_max: Annotated[Seconds, AfterValidator(_not_before_first)] = 5.0

    @model_validator(mode="after")
    def _consistent(self) -> HsmSettings:
        if self.pin_file is None and self.pin_env is None:
            raise _problem(
                "required: the file holding the user PIN (or pin_env, a variable holding it)", "pin_file"
            )
        return self

    def read_pin(self, environ: Mapping[str, str]) -> str:
        if self.pin_env:
            pin = environ.get(self.pin_env)
            if pin:
                return pin
        if self.pin_file is not None:
            try:
                pin = self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"hsm.pin_file {self.pin_file} cannot be read") from exc
            if pin:
                return pin
        raise ConfigError("no HSM PIN: set hsm.pin_file or the environment variable named by hsm.pin_env")


class TrustSettings(Table):
    """[trust]"""

    root_ca: SmkiCertificate
    issuing_ca: SmkiCertificate
    device_ca: SmkiCertificate


class CustodyConfig(Table):
    """[custody]: the officers' rules (server.domain.custody.CustodySettings)."""

    approvals_required: Annotated[int, Field(ge=1)] = 1
    approval_ttl_hours: Annotated[float, Field(gt=0)] = 24.0
    execution_window_minutes: Annotated[float, Field(gt=0)] = 60.0
    destroy_grace_days: Annotated[int, Field(ge=7, le=30)] = 7
    expiry_warning_days: Annotated[int, Field(ge=1)] = 90
    # how often each process carries out due destructions and checks expiry
    housekeeping_seconds: Annotated[float, Field(gt=0)] = 60.0


class EnrolmentConfig(Table):
    """[enrolment]: benches enrolled from a certificate request get a certificate from this CA (the one
    tls.client_ca names), whose key this file holds. Absent: no enrolment from requests."""

    client_ca_key: PemPrivateKey | None = None


class MetricsConfig(Table):
    """[metrics]: Prometheus metrics over plain HTTP at /metrics ("" disables the listener). With
    [server] processes > 1 the parent process serves the metrics of every worker."""

    listen: HostPortOrEmpty = "127.0.0.1:0"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`; "[::1]:9464" gives "::1"."""
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


class AuditSettings(Table):
    """[audit]"""

    key_uri: Annotated[str, AfterValidator(_pkcs11_uri)]  # PKCS#11 URI of the checkpoint key's private half
    public_key: (
        AuditPublicKey  # its public key (PEM): the server and offline verifiers check signatures with it
    )


class Settings(Table):
    """The whole file. The values the service reads most are also attributes of their own (listen,
    database_url, ...)."""

    server: ServerTable = ServerTable()
    database: DatabaseTable
    tls: TlsSettings
    hsm: HsmSettings
    trust: TrustSettings
    custody: CustodyConfig = CustodyConfig()
    enrolment: EnrolmentConfig = EnrolmentConfig()
    audit: AuditSettings | None = None  # None: no [audit] table, checkpoints are unavailable
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _enrolment_key_is_the_client_cas(self, info: ValidationInfo) -> Settings:
        key = self.enrolment.client_ca_key
        if key is not None and _checking_files(info) and not _same_key(self.tls.client_ca, key):
            raise _problem(
                f"{key} is not the key of tls.client_ca {self.tls.client_ca}", "enrolment.client_ca_key"
            )
        return self

    @property
    def listen(self) -> str:
        return self.server.listen

    @property
    def processes(self) -> int:
        return self.server.processes

    @property
    def threads(self) -> int:
        return self.server.threads

    @property
    def log_level(self) -> str:
        return self.server.log_level

    @property
    def health_listen(self) -> str:
        return self.server.health_listen

    @property
    def health_interval(self) -> float:
        return self.server.health_interval

    @property
    def database_url(self) -> str:
        return self.database.url

    @property
    def write_lock_wait(self) -> float:
        return self.database.write_lock_wait


def _same_key(certificate: Path, key_file: Path) -> bool:
    """The first certificate in `certificate` certifies the private key in `key_file` (both parse)."""
    cert = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


# -- loading ----------------------------------------------------------------------------------------------


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, check_files: bool = True
) -> Settings:
    """Read `path` (TOML) and validate it; relative paths are relative to the file. Environment overrides:
    ENVIRONMENT. ConfigError holding every problem found, one per key. Without check_files the files the
    settings name are not read (offline tools that need only the database and the audit key)."""
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    overrides = _apply_environment(raw, env)
    context = {"base": path.resolve().parent, "check_files": check_files, "environ": env}
    try:
        return Settings.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(*describe(exc, overrides)) from None


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """Put the environment's values into `raw`; returns which ([table], key) came from which variable."""
    overrides: dict[tuple[str, str], str] = {}
    for variable, (table, key) in ENVIRONMENT.items():
        value = env.get(variable)
        if value is None or (value == "" and variable not in EMPTY_IS_A_VALUE):
            continue
        section = raw.setdefault(table, {})
        if not isinstance(section, dict):
            continue  # "[table] must be a table" is reported
        section[key] = int(value) if key == "processes" and _INTEGER.fullmatch(value.strip()) else value
        overrides[(table, key)] = variable
    return overrides


# -- problems, one line each ------------------------------------------------------------------------------

_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda e: "required",
    "extra_forbidden": lambda e: "unknown key",
    "int_type": lambda e: f"must be an integer — got {_shown(e['input'])}",
    "int_from_float": lambda e: f"must be an integer — got {_shown(e['input'])}",
    "float_type": lambda e: f"must be a number — got {_shown(e['input'])}",
    "string_type": lambda e: f"must be a string — got {_shown(e['input'])}",
    "bool_type": lambda e: f"must be true or false — got {_shown(e['input'])}",
    "model_type": lambda e: f"must be a table — got {_shown(e['input'])}",
    "dict_type": lambda e: f"must be a table — got {_shown(e['input'])}",
    "greater_than": lambda e: f"must be more than {e['ctx']['gt']:g} — got {_shown(e['input'])}",
    "greater_than_equal": lambda e: f"must be at least {e['ctx']['ge']:g} — got {_shown(e['input'])}",
    "less_than": lambda e: f"must be less than {e['ctx']['lt']:g} — got {_shown(e['input'])}",
    "less_than_equal": lambda e: f"must be at most {e['ctx']['le']:g} — got {_shown(e['input'])}",
    "literal_error": lambda e: f"must be one of {_choices(e['ctx']['expected'])} — got {_shown(e['input'])}",
}


def describe(error: ValidationError, overrides: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    """One line per problem: "[table] key: what is wrong", or the variable's name for an override."""
    overrides = overrides or {}
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        ctx = item.get("ctx") or {}
        if ctx.get("key"):  # a table's own check names the key (table.key from the whole file's check)
            loc += str(ctx["key"]).split(".")
        kind = item["type"]
        if len(loc) == 1 and kind == "extra_forbidden":
            lines.append(_unknown_top_level(loc[0], item["input"]))
            continue
        explain = _MESSAGES.get(kind)
        text = explain(dict(item)) if explain is not None and kind != "vdno" else str(item["msg"])
        if len(loc) >= 2 and kind == "extra_forbidden":
            text += _did_you_mean(loc[-1], _keys_of(loc[:-1]))
        lines.append(f"{_where(loc, overrides)}: {text}")
    return lines


def _where(loc: list[str], overrides: Mapping[tuple[str, str], str]) -> str:
    if not loc:
        return "config"
    place = f"[{loc[0]}]" + ("" if len(loc) == 1 else " " + ".".join(loc[1:]))
    variable = overrides.get((loc[0], loc[1])) if len(loc) >= 2 else None
    return place if variable is None else f"{variable} (overrides {place})"


def _unknown_top_level(name: str, value: object) -> str:
    tables = list(Settings.model_fields)
    if isinstance(value, dict):
        return f"[{name}]: unknown table{_did_you_mean(name, tables)} (tables: {', '.join(tables)})"
    return f"{name}: unknown key outside any table (keys belong in a table such as [server])"


def _keys_of(loc: list[str]) -> list[str]:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        tables = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, Table)]
        model = tables[0] if tables else model
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _choices(expected: str) -> str:
    return expected.replace("' or '", "', '").replace("'", "")


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
