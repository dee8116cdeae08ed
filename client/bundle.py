"""The trust bundle a bench pins: vanilla generations, area credentials and the SMKI CA certificates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vdno.client.errors import BundleError
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64

ACTIVE = "active"
SIGNING = ("active", "signing-only")


@dataclass(frozen=True)
class VanillaGeneration:
    generation: int
    entity_id: bytes  # 8 bytes
    ds_certificate: bytes  # DER
    ka_certificate: bytes  # DER
    status: str  # pending | certified | active | signing-only | disabled | destroy-scheduled | destroyed
    compromised: bool = False

    @property
    def active(self) -> bool:
        """The target of new hand-ins and rotations."""
        return self.status == ACTIVE and not self.compromised

    @property
    def signs(self) -> bool:
        """May sign commands for meters that hold it."""
        return self.status in SIGNING and not self.compromised


@dataclass(frozen=True)
class AreaCredentials:
    area_id: int
    name: str
    entity_id: bytes
    ds_certificate: bytes
    ka_certificate: bytes


@dataclass(frozen=True)
class TrustBundle:
    generations: tuple[VanillaGeneration, ...]
    areas: tuple[AreaCredentials, ...]
    issuing_ca_certificate: bytes
    root_ca_certificate: bytes
    device_ca_certificate: bytes

    def area(self, area_id: int) -> AreaCredentials:
        for area in self.areas:
            if area.area_id == area_id:
                return area
        raise BundleError(f"area {area_id} is not in the trust bundle")

    def area_of_entity(self, entity_id: bytes) -> AreaCredentials | None:
        """The area whose DNO has this entity id, or None."""
        return next((a for a in self.areas if a.entity_id == entity_id), None)

    def generation(self, number: int) -> VanillaGeneration | None:
        return next((g for g in self.generations if g.generation == number), None)

    def signing_generation(self, entity_id: bytes) -> VanillaGeneration | None:
        """The vanilla generation whose entity id is `entity_id` if it may sign (active or signing-only, not
        compromised), else None."""
        for generation in self.generations:
            if generation.signs and generation.entity_id == entity_id:
                return generation
        return None

    def active_generation(self) -> VanillaGeneration | None:
        """The active vanilla generation (the target of hand-ins and rotations), or None."""
        return next((g for g in self.generations if g.active), None)

    @classmethod
    def from_proto(cls, message: Any) -> TrustBundle:
        """From a vdno.v1.TrustBundle. BundleError naming the bad entry."""
        try:
            generations = tuple(
                VanillaGeneration(
                    generation=int(g.generation),
                    entity_id=parse_eui64(g.entity_id),
                    ds_certificate=bytes(g.ds_certificate),
                    ka_certificate=bytes(g.ka_certificate),
                    status=str(g.status),
                    compromised=bool(g.compromised),
                )
                for g in message.generations
            )
            areas = tuple(
                AreaCredentials(
                    area_id=int(a.area_id),
                    name=str(a.name),
                    entity_id=parse_eui64(a.entity_id),
                    ds_certificate=bytes(a.ds_certificate),
                    ka_certificate=bytes(a.ka_certificate),
                )
                for a in message.areas
            )
        except DecodeError as exc:
            raise BundleError(f"trust bundle: {exc}") from exc
        return cls(
            generations=generations,
            areas=areas,
            issuing_ca_certificate=bytes(message.issuing_ca_certificate),
            root_ca_certificate=bytes(message.root_ca_certificate),
            device_ca_certificate=bytes(message.device_ca_certificate),
        )
