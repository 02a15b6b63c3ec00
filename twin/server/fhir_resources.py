"""Old name of :mod:`twin.server.fhir` (the builders, now split by FUT service).

Kept only for the modules changed in parallel on the performance branch (``submission.py``,
``triage_worker.py``, ``benchmarks/``); write ``from twin.server import fhir as fr`` instead, and
delete this file once nothing imports it.
"""

from twin.server.fhir import *  # noqa: F403
