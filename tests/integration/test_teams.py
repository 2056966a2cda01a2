"""Teams on a real farm (auth on): a team's prompt runs on a worker, its images land in the team's
own folder, its events reach the team's sockets only, and another team can neither see nor fetch
any of it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import websocket

from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url, saving_prompt
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration


def cli(farm, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=farm.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Listener:
    """A WebSocket on /ws whose reader thread keeps every text message."""

    def __init__(self, url: str, query: str):
        self.ws = websocket.create_connection(f"ws{url[len('http'):]}/ws?{query}", timeout=30)
        self.messages: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == 1:
                    self.messages.append(json.loads(data))
        except Exception:  # noqa: BLE001 - closed
            pass

    def wait_connected(self, timeout: float = 10) -> None:
        """Until the connect `status` arrived (the socket is attached to the relay then)."""
        deadline = time.monotonic() + timeout
        while not any(m["type"] == "status" for m in self.messages):
            assert time.monotonic() < deadline, "no status message on the WebSocket"
            time.sleep(0.02)

    def of(self, prompt_id: str) -> list[str]:
        return [m["type"] for m in self.messages if (m.get("data") or {}).get("prompt_id") == prompt_id]


@pytest.fixture
def team_farm(tmp_path):
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url, auth="on")
        try:
            cli(farm, "teams", "create", "a")
            cli(farm, "teams", "create", "b")
            keys = {team: cli(farm, "keys", "create", "--team", team) for team in ("a", "b")}
            keys["admin"] = cli(farm, "keys", "create", "--team", "default", "--role", "admin")
            farm.http.headers["Authorization"] = f"Bearer {keys['admin']}"
            farm.start_web()
            yield farm, keys
        finally:
            farm.close()


def test_a_teams_prompt_its_images_and_events_stay_with_the_team(team_farm):
    farm, keys = team_farm
    farm.start_worker("shared")
    refused = None
    try:
        websocket.create_connection(f"ws{farm.url[len('http'):]}/ws?clientId=x", timeout=10)
    except websocket.WebSocketBadStatusException as error:
        refused = error.status_code
    assert refused == 401
    own = Listener(farm.url, f"clientId=artist-a&token={keys['a']}")
    spy = Listener(farm.url, f"clientId=artist-a&subscribe=all&token={keys['b']}")  # guesses a's client id too
    own.wait_connected()
    spy.wait_connected()
    time.sleep(0.2)

    a = {"Authorization": f"Bearer {keys['a']}"}
    b = {"Authorization": f"Bearer {keys['b']}"}
    answer = farm.http.post(f"{farm.url}/prompt", headers=a, timeout=30,
                            data=json.dumps({"prompt": saving_prompt(10, 0x00FF00), "client_id": "artist-a"}))
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]
    entry = farm.history(prompt_id)  # as the admin
    assert entry["status"]["status_str"] == "success"
    image = entry["outputs"]["2"]["images"][0]
    assert (farm.data / "teams" / "a" / "output" / image["filename"]).is_file()
    assert not (farm.data / "output" / image["filename"]).exists()

    view = f"{farm.url}/view?filename={image['filename']}&type=output&subfolder={image['subfolder']}"
    assert farm.http.get(view, headers=a, timeout=10).status_code == 200
    assert farm.http.get(view, headers=b, timeout=10).status_code == 404
    assert farm.http.get(f"{farm.url}/history/{prompt_id}", headers=b, timeout=10).json() == {}

    deadline = time.monotonic() + 10
    while "execution_success" not in own.of(prompt_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert own.of(prompt_id)[:2] == ["execution_start", "execution_cached"]
    assert "execution_success" in own.of(prompt_id)
    time.sleep(0.5)
    assert spy.of(prompt_id) == []
