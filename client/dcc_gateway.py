"""The bench's side of the ACB step: a custodian-signed CS02b command (GS APDU with its KRP signature)
goes to DCC as a DUIS SignedPreCommand request (CommandVariant 6) and comes back, in the LocalCommand
response, MAC-framed by DCC's Access Control Broker, ready for local delivery to the meter."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

from vdno.client.errors import BenchError
from vdno.duis.errors import DuisError
from vdno.duis.ids import RequestId
from vdno.duis.messages import (
    UPDATE_SECURITY_CREDENTIALS,
    UPDATE_SECURITY_CREDENTIALS_KRP,
    ServiceRequest,
    SignedPreCommand,
    decode_local_command_response,
    encode_request,
)
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import decode_message

LOCAL_DELIVERY = 6  # DUIS CommandVariant: command for local delivery returned
MAX_RESPONSE_BYTES = 1 << 20
_REASON_CHARS = 300


class GatewayError(BenchError):
    """The DCC gateway step failed. `reason`: bad-url, bad-command, unreachable, http-status,
    undecodable or mismatch; `detail` the specifics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"DCC gateway {reason}: {detail}")


class DccGateway(Protocol):
    def local_command(self, signed_command: bytes, device_id: bytes) -> bytes:
        """The signed command MAC-framed by the ACB, for local delivery to device_id."""
        ...


class HttpDuisGateway:
    """DCC's DUIS endpoint at `<url>/duis` (the lab's: `vdno-labdcc serve`)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GatewayError("bad-url", f"{url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def local_command(self, signed_command: bytes, device_id: bytes) -> bytes:
        request_id = _request_id(signed_command, device_id)
        document = encode_request(
            ServiceRequest(
                request_id,
                LOCAL_DELIVERY,
                UPDATE_SECURITY_CREDENTIALS,
                UPDATE_SECURITY_CREDENTIALS_KRP,
                SignedPreCommand(bytes(signed_command)),
            )
        )
        answer = self._post(document)
        try:
            response = decode_local_command_response(answer)
        except DuisError as exc:
            raise GatewayError(
                "undecodable", f"the response to {request_id} is not a LocalCommand: {exc}"
            ) from exc
        if response.request_id is not None and response.request_id != request_id:
            raise GatewayError("mismatch", f"the response is for {response.request_id}, not {request_id}")
        command = response.gbcs_payload
        try:
            framed = decode_message(command)
        except GbcsError as exc:
            raise GatewayError("undecodable", f"the returned command does not decode: {exc}") from exc
        if not framed.mac_framed:
            raise GatewayError("mismatch", "the returned command is not MAC-framed (no ACB-SMD MAC)")
        if framed.apdu_bytes != bytes(signed_command):
            raise GatewayError(
                "mismatch", "the returned command's GS APDU differs from the signed command sent"
            )
        return command

    def _post(self, document: bytes) -> bytes:
        endpoint = f"{self.url}/duis"
        # The scheme was checked in __init__: http or https only.
        request = urllib.request.Request(  # noqa: S310
            endpoint, data=document, method="POST", headers={"Content-Type": "application/xml"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                body: bytes = reply.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            text = exc.read(_REASON_CHARS * 4).decode("utf-8", "replace")
            reason = " ".join(text.split())[:_REASON_CHARS] or exc.reason
            raise GatewayError("http-status", f"{endpoint} answered HTTP {exc.code}: {reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise GatewayError("unreachable", f"cannot reach {endpoint}: {why}") from exc
        if len(body) > MAX_RESPONSE_BYTES:
            raise GatewayError("undecodable", f"{endpoint} answered more than {MAX_RESPONSE_BYTES} bytes")
        return body


def _request_id(signed_command: bytes, device_id: bytes) -> RequestId:
    """originator : device : originator counter, from the command's grouping header."""
    try:
        message = decode_message(bytes(signed_command))
    except GbcsError as exc:
        raise GatewayError("bad-command", f"the signed command does not decode: {exc}") from exc
    header = message.apdu.header
    if message.mac_framed or not message.apdu.signature:
        raise GatewayError("bad-command", "expected a KRP-signed GS APDU without a MAC header")
    if header.business_target_id != bytes(device_id):
        raise GatewayError(
            "bad-command",
            f"the command is for {header.business_target_id.hex()}, not device {bytes(device_id).hex()}",
        )
    try:
        return RequestId(header.business_originator_id, bytes(device_id), header.originator_counter)
    except DuisError as exc:
        raise GatewayError("bad-command", str(exc)) from exc
