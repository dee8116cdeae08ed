"""The one error tree of the service. Each subclass names an outcome; rpc/interceptors.py maps it to a
gRPC status. `str(error)` is the safe public message: it never holds a PIN, a CKR code, a key handle or a
stack trace. Layers below the domain (hsm, store) translate their library errors into these with
`raise ... from`."""

from __future__ import annotations


class VdnoError(Exception):
    """Root of every error the service reports."""


# -- the caller sent something wrong: INVALID_ARGUMENT
class InvalidRequest(VdnoError):
    """A field is malformed (bad id, bad GBCS bytes, missing value); the message names the field."""


# -- the caller is not who it must be
class Unauthenticated(VdnoError):
    """No usable client certificate."""


class BenchNotEnrolled(VdnoError):
    """The client certificate is valid but the bench is not enrolled, or is revoked (PERMISSION_DENIED)."""


# -- a named thing does not exist: NOT_FOUND
class UnknownArea(VdnoError):
    """The target area id is not one of the registered DNO areas."""


class UnknownIssuance(VdnoError):
    """No issuance for that (bench, request id) or issuance id."""


# -- the request is well-formed but policy refuses it: FAILED_PRECONDITION
class PolicyRefused(VdnoError):
    """Base for refusals by policy."""


class DeviceNotVanilla(PolicyRefused):
    """The device's NO cells do not hold a vanilla generation in custody (active)."""


class DeviceCertificateUntrusted(PolicyRefused):
    """The device certificate does not chain to the configured device CA, or names another device."""


class OutcomeRejected(PolicyRefused):
    """A reported meter response does not verify or does not match the issued command."""


class KeyNotInCustody(PolicyRefused):
    """The signing key named in configuration is missing from the token or fails its attribute checks."""


# -- the service is misconfigured and an operator must fix it: FAILED_PRECONDITION
class HsmLoginRefused(VdnoError):
    """The token refused the configured PIN (incorrect, invalid, expired, locked or not set). The service
    never tries it again: an operator fixes the PIN and restarts the service."""


# -- same request id, different request: ALREADY_EXISTS
class RequestIdConflict(VdnoError):
    """The (bench, request id) was already used for a different request."""


# -- a dependency is down: UNAVAILABLE (retry with the same request id)
class Unavailable(VdnoError):
    """Base for transient unavailability."""


class StoreUnavailable(Unavailable):
    """The database cannot record state; nothing was signed."""


class HsmUnavailable(Unavailable):
    """The PKCS#11 token cannot be reached now (removed, not present, session lost, module not initialised,
    a key found earlier missing); the signer reconnects in the background."""


# -- our own invariant broke: INTERNAL (never releases a signature)
class SignatureCheckFailed(VdnoError):
    """An HSM signature failed software verification; the command was not released."""
