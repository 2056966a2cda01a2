"""The Celery app's settings, message priorities, GPU pinning, and the web when the database is down."""

from __future__ import annotations

import json
import subprocess
import sys

from farm.config import load_settings
from farm.queue.celery_app import make_celery, message_priorities, worker_queue
from tests.workflows import invert_workflow


def test_celery_app_runs_one_prompt_at_a_time_and_acknowledges_late():
    app = make_celery(load_settings(env={"FARM_BROKER_URL": "redis://127.0.0.1:1/0"}))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.worker_pool == "threads"  # the main thread stays free for remote control
    assert conf.accept_content == ["json"]


def test_front_prompts_get_the_broker_highest_priority():
    assert message_priorities("redis://h:6379/0") == (0, 9)  # Redis consumes 0 first
    assert message_priorities("redis+socket:///tmp/r.sock") == (0, 9)
    assert message_priorities("amqp://guest@h//") == (9, 0)  # RabbitMQ consumes the highest first
    queue = worker_queue("host-gpu0")
    assert queue.name == "farm.gpu.host-gpu0" and queue.queue_arguments == {"x-max-priority": 9}


def test_worker_pins_its_gpu_before_torch_loads():
    code = (
        "import os\n"
        "from farm.worker.device import pin_device\n"
        "pin_device(3)\n"
        "assert os.environ['CUDA_VISIBLE_DEVICES'] == '3'\n"
        "import torch\n"
        "try:\n"
        "    pin_device(1)\n"
        "except RuntimeError:\n"
        "    print('refused')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"


def test_database_down_answers_503_in_the_error_shape(tmp_path):
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=str(tmp_path),
                             database_url="postgresql://nobody@127.0.0.1:1/none")
    client = create_app(settings, context=make_context(settings)).test_client()
    for response in (client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})),
                     client.get("/history"), client.get("/queue")):
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"]["type"] == "service_unavailable" and body["node_errors"] == {}


def test_celery_task_events_are_off_unless_asked_for():
    from farm.config import load_settings
    from farm.queue.celery_app import make_celery

    quiet = make_celery(load_settings(env={"FARM_BROKER_URL": "redis://127.0.0.1:6379/0"}))
    assert quiet.conf.worker_send_task_events is False and quiet.conf.task_send_sent_event is False
    watched = make_celery(load_settings(env={"FARM_BROKER_URL": "redis://127.0.0.1:6379/0", "FARM_CELERY_EVENTS": "1"}))
    assert watched.conf.worker_send_task_events is True and watched.conf.task_send_sent_event is True
