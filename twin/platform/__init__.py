"""The platform model: the FUT infrastructure (workers, CPU cores, database pool, async triage and
audit) as SimPy queues, driven by the session trace and calibrated from the real API.

* :mod:`.service_time` — service-time distributions (gamma, lognormal, empirical);
* :mod:`.calibration` — measured service times per endpoint, to and from JSON;
* :mod:`.config` — the resources an architect sizes;
* :mod:`.arrivals` — open-model request arrivals from the trace or at a Poisson rate;
* :mod:`.model` — one run: every request through the queues, one record each;
* :mod:`.summary` — latency per endpoint, utilisation and queues per resource.
"""

from twin.platform.arrivals import arrivals_at_rate, arrivals_from_trace, endpoint_mix
from twin.platform.calibration import (
    CalibrationMetadata,
    EndpointCalibration,
    PlatformCalibration,
    calibration_from_latencies,
    load_calibration,
    save_calibration,
)
from twin.platform.config import SERVICES, PlatformConfig
from twin.platform.model import PlatformRun, simulate_platform
from twin.platform.service_time import ServiceTime
from twin.platform.summary import endpoint_summary, resource_summary, summarise

__all__ = [
    "SERVICES",
    "CalibrationMetadata",
    "EndpointCalibration",
    "PlatformCalibration",
    "PlatformConfig",
    "PlatformRun",
    "ServiceTime",
    "arrivals_at_rate",
    "arrivals_from_trace",
    "calibration_from_latencies",
    "endpoint_mix",
    "endpoint_summary",
    "load_calibration",
    "resource_summary",
    "save_calibration",
    "simulate_platform",
    "summarise",
]
