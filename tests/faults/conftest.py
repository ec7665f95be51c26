"""Fixtures of the fault-injection tests: load servers started per test and stopped by their own PID."""
from __future__ import annotations

import pytest

from bench.loadserver import LoadServer


@pytest.fixture
def load_servers():
    """`start(**options) -> LoadServer`: a load server subprocess on a free loopback port, stopped after the test."""
    started: list[LoadServer] = []

    def start(**options) -> LoadServer:
        server = LoadServer(**options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
