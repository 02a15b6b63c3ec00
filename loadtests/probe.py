"""How many requests per second one Locust process makes here: a cheap GET in a tight loop.

    locust -f loadtests/probe.py --headless -u 100 -r 100 -t 15s --host http://127.0.0.1:8080 --only-summary

``MetadataProbe`` asks ``/metadata``; ``EpisodeProbe`` (``--class-picker`` or name it on the command
line) a citizen's EpisodeOfCare search with a token, citizen ``TWIN_PROBE_CITIZEN`` (default 0).
If the server has CPU to spare while Locust sits at 100 % of a core, Locust is the bottleneck.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task


class MetadataProbe(FastHttpUser):
    wait_time = constant(0)

    @task
    def metadata(self) -> None:
        self.client.get("/metadata", name="metadata")


class EpisodeProbe(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        cid = os.environ.get("TWIN_PROBE_CITIZEN", "0")
        r = self.client.post("/auth/realms/nemlogin/protocol/openid-connect/token", name="token",
                             data=f"grant_type=password&username=citizen-{cid}&password=twin",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.cid, self.auth = cid, {"Authorization": f"Bearer {r.json()['access_token']}"}

    @task
    def episode(self) -> None:
        self.client.get(f"/careplan/EpisodeOfCare?patient=Patient/p-{self.cid}&status=active",
                        name="episodeofcare_search", headers=self.auth)
