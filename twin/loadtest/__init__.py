"""``twin loadtest``: replay a scenario's session trace against the real API with Locust.

Locust runs in a subprocess only (it monkeypatches the process with gevent); this package starts
and seeds a local server when no target is given, runs Locust headless with a hard time limit and
turns its CSV output into tidy tables (:mod:`twin.loadtest.runner`).
"""

from twin.loadtest.runner import LoadTestError, LoadTestRun, run_loadtest

__all__ = ["LoadTestError", "LoadTestRun", "run_loadtest"]
