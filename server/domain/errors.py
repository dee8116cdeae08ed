"""The one error tree of the service. Each subclass names an outcome; rpc/interceptors.py maps it to a
gRPC status. `str(error)` is the safe public message: it never holds a PIN, a CKR code, a key handle or a
stack trace. Layers below the domain (hsm, store) translate their library errors into these with
`raise ... from`."""

from __future__ import annotations

import re

# The trailing metadata key under which the interceptor sends a refusal's error code (error_code below).
ERROR_CODE_KEY = "vdno-error"


class VdnoError(Exception):
    """Root of every error the service reports."""

    @property
    def error_code(self) -> str:
        """The machine-readable name of this outcome: the class name in upper snake case
        (DeviceNotVanilla -> DEVICE_NOT_VANILLA). Stable: clients match on it (README "Errors")."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).upper()


# -- the caller sent something wrong: INVALID_ARGUMENT
class InvalidRequest(VdnoError):
    """A field is malformed (bad id, bad GBCS bytes, missing value); the message names the field."""


# -- the caller is not who it must be
class Unauthenticated(VdnoError):
    """No usable client certificate."""


class PermissionDenied(VdnoError):
    """The caller is authenticated but may not make this call (PERMISSION_DENIED)."""


class BenchNotEnrolled(PermissionDenied):
    """The client certificate is valid but the bench is not enrolled, or is revoked."""


class OfficerNotEnrolled(PermissionDenied):
    """The client certificate names an officer who is not enrolled, or whose enrolment was revoked."""


class WrongRole(PermissionDenied):
    """The client certificate's role (bench or officer) may not call this service."""


# -- a named thing does not exist: NOT_FOUND
class UnknownArea(VdnoError):
    """The target area id is not one of the registered DNO areas."""


class UnknownIssuance(VdnoError):
    """No issuance for that (bench, request id) or issuance id."""


class UnknownOrder(VdnoError):
    """No hand-in order for that order id, device or (bench, request id)."""


class UnknownDevice(VdnoError):
    """The custodian's records hold nothing about that device."""


class UnknownGeneration(VdnoError):
    """No vanilla generation with that number."""


class UnknownApprovalRequest(VdnoError):
    """No two-person-control request with that id."""


# -- the request is well-formed but policy refuses it: FAILED_PRECONDITION
class PolicyRefused(VdnoError):
    """Base for refusals by policy."""


class DeviceNotVanilla(PolicyRefused):
    """The device's NO cells do not hold a vanilla generation in custody (active)."""


class DeviceCertificateUntrusted(PolicyRefused):
    """The device certificate does not chain to the configured device CA, or names another device."""


class OutcomeRejected(PolicyRefused):
    """A reported meter response does not verify or does not match the issued command."""


class UnknownNetworkOperator(PolicyRefused):
    """The device's NO cell holds an entity that is neither a registered area DNO nor a vanilla generation."""


class DeviceAlreadyVanilla(PolicyRefused):
    """A hand-in was asked for a device whose NO cell already holds a vanilla generation."""


class NoActiveGeneration(PolicyRefused):
    """No vanilla generation is active, so nothing can be the target of a hand-in."""


class OutstandingCommand(PolicyRefused):
    """The device already has an order or command outstanding; the message names it."""


class CommandCancelled(PolicyRefused):
    """The request's command was cancelled: it is not handed out again (ask anew with a new request id)."""


class HandInCommandRefused(PolicyRefused):
    """A command returned for a hand-in order fails a check against that order; the message says which."""


class ApprovalRefused(PolicyRefused):
    """Two-person control refuses: a self-approval, a second approval by one officer, an expired, rejected or
    unapproved request, a request for something else."""


class CustodyConflict(PolicyRefused):
    """A custody operation does not fit the current state (e.g. activating a pending generation)."""


class CertificateRefused(PolicyRefused):
    """An imported certificate fails a check (key, role, key usage, policy, entity, chain, validity)."""


class OperationNotAllowed(PermissionDenied):
    """The bench is enrolled, but not for this operation (hand-in, hand-out, rotation)."""


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


# -- the audit log's checkpoints
class AuditDocumentInvalid(InvalidRequest):
    """A checkpoint document or an audit export is malformed; the message says where and what."""


class AuditKeyNotConfigured(PolicyRefused):
    """No audit checkpoint key is configured (the [audit] table): checkpoints are unavailable."""


class AuditChainBroken(PolicyRefused):
    """The audit log's head does not name its newest entry, so it is not signed; verify the log offline."""
