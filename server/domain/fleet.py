"""The fleet view: what the custodian's records say of each meter (officers only)."""

from __future__ import annotations

from vdno.server.domain.errors import UnknownDevice
from vdno.server.domain.policy import require_enrolled_officer
from vdno.server.domain.ports import HandInStore
from vdno.server.domain.values import DeviceCustody, DeviceEvent, FleetSummary


class FleetView:
    def __init__(self, store: HandInStore) -> None:
        self._store = store

    def _require(self, officer_id: str) -> None:
        require_enrolled_officer(officer_id, self._store.get_officer(officer_id))

    def summary(self, officer_id: str) -> FleetSummary:
        """How many meters are in each custody state, generation and area."""
        self._require(officer_id)
        return self._store.fleet_summary()

    def history(self, officer_id: str, device_id: bytes) -> tuple[DeviceCustody, list[DeviceEvent]]:
        self._require(officer_id)
        custody = self._store.device_custody(device_id)
        if custody is None:
            raise UnknownDevice(f"the records hold nothing about device {device_id.hex()}")
        return custody, self._store.device_history(device_id)

    def holding(self, officer_id: str, generation: int) -> list[bytes]:
        """The meters the records show on vanilla `generation` (what a rotation must move)."""
        self._require(officer_id)
        return self._store.devices_holding(generation)
