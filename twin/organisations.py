"""The organisations that own citizens and care teams: 98 municipalities and 5 regions.

The municipalities, their regions and their populations (Danmarks Statistik FOLK1A 2020Q1) come
from ``data/municipalities.csv`` (a copy of shared/data/municipalities.csv, source column kept).
Region codes are Danmarks Statistik's (1081 Nordjylland … 1085 Sjælland). A citizen lives in a
municipality drawn by population; the sickest are followed by their region's hospital team
instead (reference/calibration.md P5).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DATA_PATH = Path(__file__).parent / "data" / "municipalities.csv"
REGION_CODES = {"Nordjylland": 1081, "Midtjylland": 1082, "Syddanmark": 1083, "Hovedstaden": 1084, "Sjælland": 1085}


@dataclass(frozen=True)
class Organisations:
    """Parallel arrays, municipalities first (index 0..97), then the 5 regions (98..102)."""

    code: np.ndarray  # int: municipality or region code
    name: np.ndarray  # str
    kind: np.ndarray  # str: "municipality" | "region"
    region: np.ndarray  # str: the region the organisation lies in (a region lies in itself)
    population: np.ndarray  # int: inhabitants (regions: the sum of their municipalities)

    @property
    def n_municipalities(self) -> int:
        return int((self.kind == "municipality").sum())

    def region_index(self, region_name: str) -> int:
        return int(np.flatnonzero((self.kind == "region") & (self.name == region_name))[0])

    def home_region_index(self) -> np.ndarray:
        """For each organisation, the index of the region organisation it belongs to."""
        lookup = {n: i for i, (n, k) in enumerate(zip(self.name, self.kind, strict=True)) if k == "region"}
        return np.array([lookup[r] for r in self.region])


@cache
def load_organisations(path: Path = DATA_PATH) -> Organisations:
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != 98:
        raise ValueError(f"{path}: expected 98 municipalities, found {len(rows)}")
    codes = [int(r["code"]) for r in rows]
    names = [r["name"] for r in rows]
    regions = [r["region"] for r in rows]
    pops = [int(r["population"]) for r in rows]
    unknown = sorted(set(regions) - set(REGION_CODES))
    if unknown:
        raise ValueError(f"{path}: unknown region(s) {unknown}")
    for region, rcode in REGION_CODES.items():
        codes.append(rcode)
        names.append(region)
        regions.append(region)
        pops.append(sum(p for p, r in zip(pops[:98], regions[:98], strict=True) if r == region))
    kinds = ["municipality"] * 98 + ["region"] * len(REGION_CODES)
    return Organisations(np.array(codes), np.array(names, dtype=object), np.array(kinds, dtype=object),
                         np.array(regions, dtype=object), np.array(pops))
