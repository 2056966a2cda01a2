"""The scheduler on real processes when things go wrong: slow loads, workers presumed dead, killed,
stopped; a database outage. Each prompt must end once, and its client hear its end once.

Workers time out after 3 s here (FARM_WORKER_TIMEOUT_SECONDS) and beat every 0.5 s; what must
outlast a timeout (a model load, a database outage) lasts two, so that a wrong reap (reapers run
every 0.5 s) has a whole timeout more to happen in. Tests that stop a database use a throwaway server of their own.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from tests.integration.scheduler_farm import SchedulerFarm, block_prompt, own_redis_url, sleep_prompt
from tests.integration.test_websocket import Socket
from tests.services import ThrowawayPostgres, fresh_postgres_database, service_url

pytestmark = pytest.mark.integration

FINAL = ("execution_success", "execution_error", "execution_interrupted")


def finals(sock: Socket, prompt_id: str) -> list[str]:
    """The end events the socket got for `prompt_id`, the final `executing` counted as "done"."""
    ends = []
    for message in sock.messages:
        if isinstance(message, tuple):
            kind, data = message
            if data.get("prompt_id") == prompt_id and (kind in FINAL or (kind == "executing" and data["node"] is None)):
                ends.append("done" if kind == "executing" else kind)
    return ends


def test_a_worker_stays_live_through_a_long_model_load_and_a_stale_attempt_ends_quietly(farm, tmp_path):
    farm.start_workers("alpha", "beta")
    # Defect 1: a load that holds the model cache two worker timeouts long; no reap, one run.
    loaded = farm.submit(block_prompt(seconds=6, hold_models=True))
    entry = farm.history(loaded, timeout=60)
    assert entry["status"]["status_str"] == "success"
    assert farm.row(loaded)["attempt"] == 1
    assert "presumed dead" not in farm.logs()

    # Defect 2: a worker frozen past the timeout is reaped; its prompt runs again elsewhere; the
    # frozen worker wakes up, its attempt is stale: the client hears the prompt's end once.
    sock = Socket(farm.web, "?clientId=watcher")
    release = tmp_path / "release"
    prompt_id = farm.submit(block_prompt(str(release), seconds=120), client_id="watcher")
    first = farm.wait_row(prompt_id, lambda row: row["state"] == "running")["worker"]
    other = "beta" if first == "alpha" else "alpha"
    farm.signal_worker(first, signal.SIGSTOP)
    try:
        farm.wait_row(prompt_id, lambda row: row["state"] == "running" and row["worker"] == other, timeout=30)
    finally:
        farm.signal_worker(first, signal.SIGCONT)
    farm.wait_worker_state(first, ("idle", "busy"), timeout=30)  # it rejoined
    release.touch()
    entry = farm.history(prompt_id)
    assert entry["status"]["status_str"] == "success" and farm.row(prompt_id)["attempt"] == 2
    sock.until_done(prompt_id)
    time.sleep(1.5)  # anything the stale attempt might still send
    assert finals(sock, prompt_id) == ["execution_success", "done"]
    assert "presumed dead" in farm.workers[first].output()
    # The worker that was presumed dead goes on serving.
    farm.http.post(f"{farm.url}/api/workers/{other}/drain")
    again = farm.submit(sleep_prompt(10))
    assert farm.history(again)["status"]["status_str"] == "success" and farm.row(again)["worker"] == first
    sock.close()


def test_when_every_worker_is_gone_the_web_ends_their_prompts(tmp_path):
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url, max_attempts=1)
        try:
            farm.start_web(wait=False)  # the worker starts alongside
            farm.start_worker("only")
            sock = Socket(farm.web, "?clientId=c")
            prompt_id = farm.submit(block_prompt(seconds=120), client_id="c")
            farm.wait_row(prompt_id, lambda row: row["state"] == "running")
            farm.kill_worker("only")
            entry = farm.history(prompt_id, timeout=30)
            assert entry["status"]["status_str"] == "error"
            assert entry["status"]["messages"][0][1]["exception_type"] == "WorkerLost"
            sock.until_done(prompt_id, timeout=30)
            assert finals(sock, prompt_id) == ["execution_error", "done"]
            assert farm.http.get(f"{farm.url}/queue").json() == {"queue_running": [], "queue_pending": []}
            assert farm.worker_state("only") == "dead"
            sock.close()
        finally:
            farm.close()


def test_sigterm_drains_and_past_the_grace_puts_the_prompt_back_silently(farm):
    # Defect 5, first half: the running prompt finishes, then the worker exits.
    farm.start_worker("first", stop_grace_seconds=30)
    sock = Socket(farm.web, "?clientId=c")
    finishing = farm.submit(sleep_prompt(2500), client_id="c")
    farm.wait_row(finishing, lambda row: row["state"] == "running")
    started = time.monotonic()
    assert farm.workers["first"].stop(signal.SIGTERM, timeout=60) == 0
    assert time.monotonic() - started >= 1.0  # it waited for the prompt
    assert farm.history(finishing)["status"]["status_str"] == "success"
    sock.until_done(finishing)
    assert finals(sock, finishing) == ["execution_success", "done"]

    # Second half: past a 1 s grace the prompt goes back to the queue and the client hears nothing
    # final; the next worker runs it, and then the client hears its end once. (5 s: well past the
    # grace, and what the third worker then runs in full.)
    farm.start_worker("second", stop_grace_seconds=1)
    put_back = farm.submit(sleep_prompt(5000), client_id="c")
    farm.wait_row(put_back, lambda row: row["state"] == "running")
    assert farm.workers["second"].stop(signal.SIGTERM, timeout=30) == 0
    row = farm.wait_row(put_back, lambda row: row["state"] == "queued")
    assert row["attempt"] == 0  # the attempt was not the prompt's fault
    time.sleep(1)
    assert finals(sock, put_back) == []
    farm.start_worker("third")
    assert farm.history(put_back)["status"]["status_str"] == "success"
    sock.until_done(put_back)
    assert finals(sock, put_back) == ["execution_success", "done"]
    sock.close()


def test_a_prompt_waiting_behind_a_long_one_is_not_taken_for_lost(farm):
    # Defect 6: with a 2 s dispatch timeout, the prompt behind a 5 s one still runs once.
    farm.start_worker("only", dispatch_timeout_seconds=2)
    long_one = farm.submit(sleep_prompt(5000))
    behind = farm.submit(sleep_prompt(10))
    for prompt_id in (long_one, behind):
        assert farm.history(prompt_id)["status"]["status_str"] == "success"
        assert farm.row(prompt_id)["attempt"] == 1


def test_workers_with_different_model_folders_get_only_what_they_can_run(farm):
    for name, files in (("has-a", ["a.safetensors"]), ("has-b", ["b.safetensors", "c.safetensors"])):
        folder = farm.folder / f"models-{name}" / "checkpoints"
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_bytes(b"not loaded by the test node")
        farm.start_worker(name, wait=False, models_dir=folder.parent)
    for name in ("has-a", "has-b"):
        farm.wait_worker_state(name, ("idle", "busy"))
    deadline = time.monotonic() + 30
    while farm.http.get(f"{farm.url}/models/checkpoints").json() != ["a.safetensors", "b.safetensors",
                                                                       "c.safetensors"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    names = ["a.safetensors", "b.safetensors", "c.safetensors"] * 4
    ids = [farm.submit({"1": {"class_type": "ModelName", "inputs": {"ckpt_name": name, "value": i}}})
           for i, name in enumerate(names)]
    for prompt_id, name in zip(ids, names):
        entry = farm.history(prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert farm.row(prompt_id)["worker"] == ("has-a" if name == "a.safetensors" else "has-b")


def test_a_database_outage_while_results_are_written_loses_and_doubles_nothing(tmp_path):
    # Defect 3, and "PostgreSQL restarted under load": a server of this test's own is stopped.
    postgres = ThrowawayPostgres()
    redis_url = own_redis_url()
    farm = SchedulerFarm(tmp_path, postgres.url, redis_url, redis_url)
    try:
        farm.start_web(wait=False)  # the workers start alongside
        farm.start_workers("alpha", "beta")
        release = tmp_path / "release"
        writing = farm.submit(block_prompt(str(release), seconds=120))
        farm.wait_row(writing, lambda row: row["state"] == "running")
        accepted, refused, stop = [writing], [], threading.Event()

        def load() -> None:
            while not stop.is_set():
                response = requests.post(f"{farm.url}/prompt", data=json.dumps({"prompt": sleep_prompt(30)}),
                                         timeout=30)
                if response.status_code == 200:
                    accepted.append(response.json()["prompt_id"])
                else:
                    refused.append(response)
                time.sleep(0.05)

        submitter = threading.Thread(target=load)
        submitter.start()
        time.sleep(1)
        postgres.stop()
        release.touch()  # the prompt ends while its result cannot be written
        time.sleep(6)  # two worker timeouts without a database: every beat is stale when it is back
        postgres.start()
        time.sleep(3)
        stop.set()
        submitter.join()
        assert refused, "no request was refused while the database was down"
        for response in refused:
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "service_unavailable"
        assert len(accepted) > 10
        for prompt_id in accepted:
            assert farm.history(prompt_id, timeout=120)["status"]["status_str"] == "success"
        assert farm.row(writing)["attempt"] == 1  # its result was written once, by its first run
        with farm.engine.connect() as connection:
            from sqlalchemy import text

            states = dict(connection.execute(text("SELECT state, count(*) FROM prompts GROUP BY state")).all())
        assert states == {"success": len(accepted)}
        # Both workers still take work.
        farm.http.post(f"{farm.url}/api/workers/alpha/drain")
        assert farm.row(farm.submit(sleep_prompt(10)))["state"] in ("queued", "dispatched", "running", "success")
        last = farm.submit(sleep_prompt(10))
        farm.history(last)
        assert farm.row(last)["worker"] == "beta"
    finally:
        farm.close()
        postgres.close()


def test_a_prompt_past_the_timeout_fails_and_a_stuck_worker_is_restarted(farm):
    farm.start_worker("watched", restart=True, prompt_timeout_seconds=2)
    sock = Socket(farm.web, "?clientId=c")
    # A node that checks for interrupts stops at the timeout; the prompt fails with Timeout.
    slow = farm.submit(sleep_prompt(30000), client_id="c")
    entry = farm.history(slow, timeout=30)
    error = entry["status"]["messages"][-1][1]
    assert entry["status"]["status_str"] == "error"
    assert (error["exception_type"], error["node_id"], error["node_type"]) == ("Timeout", "1", "Sleep")
    sock.until_done(slow)
    assert finals(sock, slow) == ["execution_error", "done"]
    # A node that ignores interrupts: the watchdog records the timeout, ends the process, and the
    # supervisor starts the worker again.
    before = farm.http.get(f"{farm.url}/api/workers/watched").json()["pid"]
    stuck = farm.submit(block_prompt(seconds=120), client_id="c")
    entry = farm.history(stuck, timeout=60)
    assert entry["status"]["messages"][-1][1]["exception_type"] == "Timeout"
    assert "did not stop; its worker was restarted" in entry["status"]["messages"][-1][1]["exception_message"]
    sock.until_done(stuck)
    assert finals(sock, stuck) == ["execution_error", "done"]
    assert farm.row(stuck)["state"] == "error"
    deadline = time.monotonic() + 60
    while farm.http.get(f"{farm.url}/api/workers/watched").json()["pid"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "restarting in" in farm.workers["watched"].log_path.read_text()
    after = farm.submit(sleep_prompt(10))
    assert farm.history(after)["status"]["status_str"] == "success"
    listed = farm.http.get(f"{farm.url}/api/workers/watched").json()
    assert listed["failures_in_row"] == 0 and listed["prompts_failed"] == 2
    sock.close()
