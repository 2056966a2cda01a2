"""GET /system_stats (the web host and one device per live worker) and GET /features."""

from __future__ import annotations

import os
import platform
import sys

from flask import Blueprint, jsonify

import farm as farm_package
from farm.services import workers
from farm.hostinfo import host_memory
from web.context import farm

blueprint = Blueprint("system", __name__)

# The ComfyUI server version whose API the farm follows (see the README's compatibility notes).
COMFYUI_API_VERSION = "0.3.64"


@blueprint.get("/system_stats")
def system_stats():
    context = farm()
    live = workers.live_workers(context.database, context.settings)
    ram_total, ram_free = host_memory()
    return jsonify({
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_API_VERSION,
            "farm_version": farm_package.__version__,
            "python_version": sys.version,
            "pytorch_version": live[0].torch_version if live else "",
            "embedded_python": False,
            "argv": sys.argv,
            "hostname": platform.node(),
        },
        "devices": [
            {
                "name": worker.device_name,
                "type": worker.device_type,
                "index": worker.gpu_index,
                "vram_total": worker.vram_total,
                "vram_free": worker.vram_free,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
                "worker": worker.name,
                "host": worker.host,
                "current_prompt": worker.current_prompt,
            }
            for worker in live
        ],
    })


def feature_flags(settings) -> dict:
    """The server's feature flags: GET /features, and the reply to a socket's `feature_flags`."""
    return {"supports_preview_metadata": True, "max_upload_size": settings.max_upload_bytes}


@blueprint.get("/features")
def features():
    return jsonify(feature_flags(farm().settings))
