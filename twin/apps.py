"""The citizen-app vendor mix: which app each citizen uses, and the habits that cost the API.

FUT is one national infrastructure with several citizen apps from different vendors on top of it
(the token's ``scope`` carries a coexistence tag per vendor solution, reference/fut-infrastructure.md
§3). The apps make the same calls for a submission, but differ in habits that multiply into load:

* ``rereads_procedures`` — at every app start it asks ``$get-patient-procedures`` and reads the
  ServiceRequest (the thresholds) again; an app that does not caches them from its first start
  (per citizen, for the rest of the replay);
* ``message_poll_min`` — it asks the citizen's inbox (``GET /patient/Communication``) every so many
  minutes in the background while the citizen is enrolled; ``None`` means push, no polling.

The session trace counts every session as re-reading (``twin.api_calls.CALL_SEQUENCES``); the load
test makes each citizen follow their own app, and reports requests per app, so an operator sees
what one vendor's habits cost. Which citizen uses which app is drawn once from the scenario seed:
the same seed gives the same assignment in every run and on every load-test worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.rng import Streams
from twin.validation import ScenarioError, field

APP_STREAM = "apps/assignment"  # its own named stream: adding apps never shifts the model's numbers


@dataclass(frozen=True)
class CitizenApp:
    name: str
    share: float = field(lo=0, hi=1)  # share of citizens using this app
    rereads_procedures: bool = True  # $get-patient-procedures + ServiceRequest read at every start
    message_poll_min: float | None = field(lo=1, hi=1440, default=None)  # background inbox polling; None = push


@dataclass(frozen=True)
class Apps:
    vendors: tuple[CitizenApp, ...]

    def validate(self) -> None:
        if not self.vendors:
            raise ScenarioError("vendors: at least one citizen app is needed")
        names = [a.name for a in self.vendors]
        if len(set(names)) != len(names):
            raise ScenarioError(f"vendors: app names must be unique, got {names}")
        total = sum(a.share for a in self.vendors)
        if abs(total - 1.0) > 1e-6:
            raise ScenarioError(f"vendors: shares must sum to 1, they sum to {total:.6g}")

    def by_name(self, name: str) -> CitizenApp:
        return next(a for a in self.vendors if a.name == name)


def assign_apps(citizen_ids: np.ndarray, apps: Apps, seed: int) -> np.ndarray:
    """The index (into ``apps.vendors``) of each citizen's app.

    Citizen ``c`` gets the ``c``-th uniform draw of the seed's ``apps/assignment`` stream, so a
    citizen's app depends only on the seed, the shares and their own id — not on which other
    citizens are in a replay window, nor on how the schedule is split across workers.
    """
    ids = np.asarray(citizen_ids, dtype=np.int64)
    if len(ids) and ids.min() < 0:
        raise ValueError("citizen ids must be non-negative")
    n = int(ids.max()) + 1 if len(ids) else 0
    u = Streams(seed).get(APP_STREAM).random(n)
    cumulative = np.cumsum([a.share for a in apps.vendors])
    cumulative[-1] = 1.0  # shares sum to 1 up to rounding; no draw may fall past the last app
    return np.searchsorted(cumulative, u[ids], side="right").astype(np.int16)


def poll_rate_per_citizen_s(apps: Apps) -> float:
    """Background inbox polls per second per enrolled citizen, over the app mix (the apps poll
    while the citizen is enrolled, day and night: the load test's and the platform model's
    ``message_poll``)."""
    return sum(a.share / (a.message_poll_min * 60.0) for a in apps.vendors if a.message_poll_min)
