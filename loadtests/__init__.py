"""Locust load tests that replay the twin's session trace against the real API (see locustfile.py).

Only ``users.py`` and ``locustfile.py`` import Locust (which monkeypatches with gevent); the
schedule, shapes and payloads are plain functions that the ``twin`` process and the tests import.
"""
