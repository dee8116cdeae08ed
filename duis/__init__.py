"""DUIS 5.4 XML codec for the few messages vdno exchanges with DCC: pure Python, imports neither grpc nor
pkcs11 nor any vdno service code.

- duis.ids: RequestId (originator EUI : target EUI : counter), EUI-64 text form
- duis.messages: ServiceRequest with an UpdateSecurityCredentialsKrp (SR 6.15.1) or SignedPreCommand body,
  LocalCommandResponse; encode_request / decode_request, encode_local_command_response /
  decode_local_command_response
- duis.errors: DuisError (root) and ResponseCodeError

Untrusted documents are parsed with defusedxml (no DTDs, no entities, at most MAX_DOCUMENT_BYTES).
"""

from vdno.duis.errors import DuisError, ResponseCodeError

__all__ = ["DuisError", "ResponseCodeError"]
