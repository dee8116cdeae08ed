"""The 14 GB DNO licence areas: MPAS distributor id -> the name people use. One table for every part of
vdno (the server, the lab stand-ins, the tools); a hand-out names its area by these ids (10-23)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DNO_AREAS: Mapping[int, str] = MappingProxyType(
    {
        10: "Eastern England",
        11: "East Midlands",
        12: "London",
        13: "Merseyside and North Wales",
        14: "West Midlands",
        15: "North Eastern England",
        16: "North Western England",
        17: "Northern Scotland",
        18: "Southern Scotland",
        19: "South Eastern England",
        20: "Southern England",
        21: "South Wales",
        22: "South Western England",
        23: "Yorkshire",
    }
)
