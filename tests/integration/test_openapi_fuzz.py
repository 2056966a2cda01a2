"""Schemathesis against a live `farm web` (SQLite, no broker): generated requests for every described
operation, checked for server errors and for answers the description does not allow (status, media
type, body schema). Once with keys off, 15 examples an operation; once with keys on and an admin key
sent, 5 examples an operation (what the key changes is the key check in front of the same views: every
operation is still called with it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.integration.farm_process import FarmProcess, farm_env, free_port
from web.openapi import document

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The /api mirrors run the same view functions as their bare paths (tests/unit/test_openapi.py
# checks both are described alike): fuzzing both would double the time for nothing new.
MIRRORS = [path for path, item in document()["paths"].items() if "x-mirror-of" in item]


def config(examples: int) -> dict:
    return {
        "generation": {"max-examples": examples, "with-security-parameters": False, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 30,
    }

# With keys on, the run's own admin key has id 1, a name the fuzzer soon tries: revoking it would
# leave every later operation a 401 (allowed, so nothing else would be tested).
SPARED_WITH_KEYS = {("POST", "/api/keys/{which}/revoke")}


def live_farm(tmp_path_factory, auth: str):
    """`farm web` on a migrated SQLite database; with keys on, an admin key to send."""
    data = tmp_path_factory.mktemp(f"openapi-{auth}") / "data"
    env = {**farm_env(data), "FARM_AUTH": auth}
    cli = [sys.executable, "-m", "farm.cli"]
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("FARM_")}, **env}
    subprocess.run([*cli, "db", "upgrade"], env=run_env, check=True, capture_output=True, timeout=120)
    headers = {}
    if auth == "on":
        made = subprocess.run([*cli, "keys", "create", "--team", "default", "--role", "admin"], env=run_env,
                              check=True, capture_output=True, text=True, timeout=120)
        headers = {"X-API-Key": made.stdout.strip()}
    port = free_port()
    farm = FarmProcess(["web", "--port", str(port)], env, data.parent / "web.log", port)
    try:
        farm.wait_ready()
        yield farm.url, headers
    finally:
        code = farm.stop()
        assert code == 0, farm.output()


@pytest.fixture(scope="module")
def farm_keys_off(tmp_path_factory):
    yield from live_farm(tmp_path_factory, "off")


@pytest.fixture(scope="module")
def farm_keys_on(tmp_path_factory):
    yield from live_farm(tmp_path_factory, "on")


# The description the farm serves (tests/unit/test_openapi.py checks GET /openapi.json is this one),
# loaded here so the operations are known when pytest collects them (schemathesis.pytest.from_fixture,
# which would load it from the live farm, fails on pytest 9: it sets the item's removed _nodeid).
schema = schemathesis.openapi.from_dict(document(), config=schemathesis.Config.from_dict(config(15))).exclude(
    path=MIRRORS)
schema_with_keys = schemathesis.openapi.from_dict(document(), config=schemathesis.Config.from_dict(config(5))).exclude(
    path=MIRRORS)


def _call(case, live_farm) -> None:
    url, headers = live_farm
    if headers and (case.operation.method.upper(), case.operation.path) in SPARED_WITH_KEYS:
        pytest.skip("it would revoke the run's own key")
    case.call_and_validate(base_url=url, headers=headers, checks=CHECKS)


@schema.parametrize()
def test_every_operation_answers_as_described(case, farm_keys_off):
    _call(case, farm_keys_off)


@schema_with_keys.parametrize()
def test_every_operation_answers_as_described_to_an_admin_key(case, farm_keys_on):
    _call(case, farm_keys_on)
