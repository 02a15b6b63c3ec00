"""Named random streams, all spawned from the scenario seed.

Each stochastic process of the model (population, exacerbations, sessions, nurse work …) draws from
its own ``numpy.random.Generator``. The stream for a name is derived from the seed and the *name*
(not from the order in which streams are asked for), so adding a process never shifts the numbers
another process sees. That gives common random numbers when two scenarios are compared: a change
to the nurse staffing leaves every citizen's readings untouched. Nothing touches global random state.
"""

from __future__ import annotations

import zlib

import numpy as np


class Streams:
    """A factory of independent, reproducible generators keyed by name."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def get(self, name: str) -> np.random.Generator:
        # crc32 of the name gives a stable integer key, independent of Python's hash seed.
        key = zlib.crc32(name.encode("utf-8"))
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, key])))

    def replication_seeds(self, n: int) -> list[int]:
        """Seeds for n independent replications, derived from this seed."""
        children = np.random.SeedSequence(self.seed).spawn(n)
        return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in children]
