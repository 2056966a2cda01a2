"""The OpenAPI description's shared shapes (components.schemas): ComfyUI's wire format and the farm's.

Response shapes name the fields clients rely on and leave others open (no additionalProperties:
false), so a field added later does not make the description false.
"""

from __future__ import annotations

from web.openapi.parts import INTEGER, STRING, nullable, ref

NUMBER = {"type": "number"}
OBJECT = {"type": "object"}
TIMESTAMP = {"type": "string", "description": "ISO 8601 date and time"}
STRINGS = {"type": "array", "items": STRING}
UUID = {"type": "string", "format": "uuid", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
KIND = {"type": "string", "enum": ["input", "output", "temp"]}


def _object(properties: dict, required: tuple = (), **extra) -> dict:
    found = {"type": "object", "properties": properties, **extra}
    if required:
        found["required"] = list(required)
    return found


ERROR_OBJECT = _object({
    "type": {"type": "string", "description": "a stable identifier: no_prompt, invalid_prompt_id, not_found, ..."},
    "message": STRING,
    "details": STRING,
    "extra_info": OBJECT,
}, ("type", "message", "details", "extra_info"))

NODE_ERROR = _object({
    "errors": {"type": "array", "items": ref("ErrorObject")},
    "dependent_outputs": {"type": "array", "items": {"type": ["string", "integer"]}},
    "class_type": nullable(STRING),
}, ("errors",))

QUEUE_ITEM = {
    "type": "array",
    "description": "[number, prompt_id, prompt, extra_data, outputs_to_execute] (spec 2.3)",
    "prefixItems": [NUMBER, STRING, OBJECT, nullable(OBJECT), {"type": "array"}],
    "minItems": 5,
    "maxItems": 5,
}

NODE = _object({
    "class_type": {"type": "string", "minLength": 1},
    "inputs": {"type": "object", "description": "constants, or links [node_id, output_index]"},
    "_meta": OBJECT,
}, ("class_type", "inputs"))

FILE_REF = _object({"filename": STRING, "subfolder": STRING, "type": STRING}, ("filename",))

SCHEMAS = {
    "ErrorObject": ERROR_OBJECT,
    "Error": _object({"error": ref("ErrorObject"), "node_errors": {"type": "object",
                                                                     "additionalProperties": ref("NodeError")}},
                     ("error", "node_errors"), description="ComfyUI's error shape; every failure of the API has it"),
    "NodeError": NODE_ERROR,
    "TextError": _object({"error": STRING}, ("error",),
                         description="The jobs API's failures, as newer ComfyUI gives them"),
    "Uuid": UUID,
    "Prompt": {"type": "object", "description": "An API-format workflow: node id -> node (spec 2.1)",
               "additionalProperties": ref("Node"), "minProperties": 1},
    "Node": NODE,
    "PromptRequest": _object({
        "prompt": ref("Prompt"),
        "prompt_id": {**nullable(UUID), "description": "a lowercase hyphenated UUID; the same id and body again "
                                                       "is answered as the first time (a retry)"},
        "client_id": {"type": "string", "description": "the WebSocket (clientId) that gets this prompt's events"},
        "number": {"type": "number", "description": "an explicit priority (lower runs first); front is ignored"},
        "front": {"type": "boolean", "description": "run before everything queued (needs the operator role)"},
        "extra_data": {"type": "object", "description": "kept with the prompt; extra_pnginfo goes into saved PNGs"},
        "partial_execution_targets": {"type": "array", "items": STRING, "description": "only these output nodes"},
    }, ("prompt",)),
    "PromptAccepted": _object({"prompt_id": STRING, "number": NUMBER, "node_errors": OBJECT},
                              ("prompt_id", "number", "node_errors")),
    "QueueRemaining": _object({"exec_info": _object({"queue_remaining": {"type": "integer", "minimum": 0}},
                                                    ("queue_remaining",))}, ("exec_info",)),
    "QueueItem": QUEUE_ITEM,
    "Queue": _object({"queue_running": {"type": "array", "items": ref("QueueItem")},
                      "queue_pending": {"type": "array", "items": ref("QueueItem")}},
                     ("queue_running", "queue_pending")),
    "ClearOrDelete": _object({"clear": {"type": "boolean", "description": "everything (of the caller's team)"},
                              "delete": {"type": "array", "items": STRING, "description": "these prompt ids"}}),
    "HistoryEntry": _object({
        "prompt": ref("QueueItem"),
        "outputs": {"type": "object", "description": "node id -> its UI outputs ({images: [file refs]}, ...)"},
        "status": _object({"status_str": {"type": "string", "enum": ["success", "error"]},
                           "completed": {"type": "boolean"}, "messages": {"type": "array"}},
                          ("status_str", "completed", "messages")),
        "meta": OBJECT,
    }, ("prompt", "outputs", "status", "meta")),
    "History": {"type": "object", "description": "prompt id -> entry, oldest first",
                "additionalProperties": ref("HistoryEntry")},
    "FileRef": FILE_REF,
    "Uploaded": _object({"name": STRING, "subfolder": STRING, "type": KIND}, ("name", "subfolder", "type")),
    "ObjectInfoEntry": _object({
        "input": OBJECT, "input_order": OBJECT, "output": {"type": "array"}, "output_is_list": {"type": "array"},
        "output_name": {"type": "array"}, "name": STRING, "display_name": STRING, "description": STRING,
        "python_module": STRING, "category": STRING, "output_node": {"type": "boolean"},
    }, ("input", "output", "name", "category")),
    "ObjectInfo": {"type": "object", "description": "node class -> its schema (ComfyUI's V1 form)",
                   "additionalProperties": ref("ObjectInfoEntry")},
    "SystemStats": _object({
        "system": _object({"os": STRING, "ram_total": INTEGER, "ram_free": INTEGER, "comfyui_version": STRING,
                           "python_version": STRING, "pytorch_version": STRING, "embedded_python": {"type": "boolean"},
                           "argv": STRINGS}, ("os", "ram_total", "ram_free", "comfyui_version", "python_version")),
        "devices": {"type": "array", "items": _object({
            "name": nullable(STRING), "type": nullable(STRING), "index": nullable(INTEGER),
            "vram_total": nullable(INTEGER), "vram_free": nullable(INTEGER), "worker": STRING})},
    }, ("system", "devices")),
    "Features": _object({"supports_preview_metadata": {"type": "boolean"}, "max_upload_size": INTEGER},
                        ("supports_preview_metadata", "max_upload_size")),
    "Job": _object({
        "id": STRING,
        "status": {"type": "string", "enum": ["pending", "in_progress", "completed", "failed", "cancelled"]},
        "priority": NUMBER, "create_time": INTEGER, "execution_start_time": INTEGER,
        "execution_end_time": INTEGER, "execution_error": OBJECT, "outputs_count": INTEGER,
        "previewable_outputs_count": INTEGER, "preview_output": OBJECT, "workflow_id": STRING,
        "waiting_for": {"description": "why a pending job waits, when not for its turn"},
    }, ("id", "status")),
    "JobDetail": {"allOf": [ref("Job"), _object({"outputs": OBJECT, "execution_status": nullable(OBJECT),
                                                 "workflow": OBJECT}, ("outputs", "workflow"))]},
    "JobList": _object({
        "jobs": {"type": "array", "items": ref("Job")},
        "pagination": _object({"offset": INTEGER, "limit": nullable(INTEGER), "total": INTEGER,
                               "has_more": {"type": "boolean"},
                               "next_cursor": {**nullable(STRING), "description": "pass as cursor for the next page"}},
                              ("has_more",)),
    }, ("jobs", "pagination")),
    "UserFileInfo": _object({"path": STRING, "size": INTEGER, "modified": NUMBER, "created": NUMBER},
                            ("path", "size", "modified", "created")),
    "UserDataEntry": _object({"name": STRING, "path": STRING, "type": {"type": "string", "enum": ["directory", "file"]},
                              "size": INTEGER, "modified": NUMBER}, ("name", "path", "type")),
    "Worker": _object({
        "name": STRING, "host": STRING,
        "state": {"type": "string", "description": "idle, busy, draining, locked, dead, ..."},
        "lock_reason": nullable(STRING), "gpu_index": nullable(INTEGER), "device": nullable(STRING),
        "device_type": nullable(STRING), "vram_total": nullable(INTEGER), "vram_free": nullable(INTEGER),
        "loaded_models": {"type": "array"}, "model_files": INTEGER, "tags": STRINGS,
        "current_prompt": nullable(OBJECT), "prompts_done": INTEGER, "prompts_failed": INTEGER,
        "failures_in_row": INTEGER, "version": nullable(STRING), "pid": nullable(INTEGER), "started_at": TIMESTAMP,
        "last_heartbeat_age": NUMBER,
    }, ("name", "host", "state")),
    "Workers": _object({"workers": {"type": "array", "items": ref("Worker")},
                        "versions": {"type": "object", "additionalProperties": INTEGER},
                        "dispatch": ref("Dispatch")}, ("workers", "versions", "dispatch")),
    "Dispatch": _object({"paused": {"type": "boolean"}}, ("paused",)),
    "Me": _object({"team": STRING, "role": STRING, "actor": STRING, "auth": {"type": "boolean"}},
                  ("team", "role", "actor", "auth")),
    "TeamLimits": _object({
        "share": {"type": "number", "minimum": 0, "description": "worker slots the team is guaranteed"},
        "burst": {**nullable({"type": "integer", "minimum": 0}), "description": "slots beyond its share; null: any"},
        "max_queued": nullable({"type": "integer", "minimum": 0}),
        "max_running": nullable({"type": "integer", "minimum": 0}),
        "max_priority": {"type": "integer", "minimum": 0, "maximum": 100},
        "webhook": {**nullable({"type": "string", "pattern": "^https?://"}),
                    "description": "every prompt and batch event of the team is posted here"},
    }),
    "Team": _object({"name": STRING, "share": NUMBER, "burst": nullable(INTEGER), "max_queued": nullable(INTEGER),
                     "max_running": nullable(INTEGER), "max_priority": INTEGER, "webhook": nullable(STRING),
                     "created_at": nullable(TIMESTAMP)}, ("name", "share")),
    "Key": _object({"id": INTEGER, "prefix": STRING, "team": STRING,
                    "role": {"type": "string", "enum": ["submit", "operator", "admin"]}, "label": nullable(STRING),
                    "created_at": nullable(TIMESTAMP), "revoked_at": nullable(TIMESTAMP)},
                   ("id", "prefix", "team", "role")),
    "AuditPage": _object({
        "entries": {"type": "array", "items": _object({
            "id": INTEGER, "at": TIMESTAMP, "actor": STRING, "actor_team": nullable(STRING), "role": STRING,
            "action": STRING, "target": STRING, "detail": nullable(OBJECT)}, ("id", "at", "action"))},
        "next": {**nullable(INTEGER), "description": "pass as before for the next page"},
    }, ("entries", "next")),
    "BatchRequest": _object({
        "workflow": {**ref("Prompt"), "description": "one workflow, with a sweep or rows"},
        "workflows": {"type": "array", "items": ref("Prompt"), "minItems": 1, "description": "one cell each"},
        "sweep": {"type": "object", "description": "'<node id>.<input name>': [values] or {\"range\": [a, b]}"},
        "mode": {"type": "string", "enum": ["product", "zip"]},
        "rows": {"type": "array", "items": {"type": "object", "minProperties": 1}, "minItems": 1},
        "name": {"type": "string", "maxLength": 200},
        "priority": {"type": "integer", "minimum": 0, "maximum": 100},
        "max_workers": nullable({"type": "integer", "minimum": 1}),
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "webhook": nullable({"type": "string", "pattern": "^https?://"}),
        "client_id": STRING,
        "extra_data": OBJECT,
        "dry_run": {"type": "boolean", "description": "count the cells and estimate, store nothing"},
    }, description="give workflow (with sweep or rows) or workflows"),
    "BatchCreated": _object({"batch_id": STRING, "cells": INTEGER, "prompt_ids": STRINGS}, ("batch_id", "cells")),
    "BatchEstimate": _object({"dry_run": {"const": True}, "cells": INTEGER, "estimate": OBJECT},
                             ("dry_run", "cells")),
    "Batch": _object({
        "id": STRING, "name": nullable(STRING), "team": STRING,
        "state": {"type": "string", "enum": ["queued", "running", "paused", "done", "failed", "cancelled"]},
        "priority": INTEGER, "cells": INTEGER, "counts": {"type": "object", "additionalProperties": INTEGER},
        "progress": NUMBER, "max_workers": nullable(INTEGER), "tags": STRINGS, "webhook": nullable(STRING),
        "created_at": TIMESTAMP, "created_by": nullable(STRING), "eta_seconds": nullable(NUMBER),
    }, ("id", "team", "state", "cells")),
    "BatchDetail": {"allOf": [ref("Batch"), _object({"sweep": nullable(OBJECT), "outputs": {"type": "array"},
                                                     "workers_failed": {"type": "array"},
                                                     "webhooks": {"type": "array"}})]},
    "BatchPage": _object({"batches": {"type": "array", "items": ref("Batch")},
                          "next": {**nullable(STRING), "description": "pass as before for the next page"}},
                         ("batches", "next")),
    "CellPage": _object({
        "cells": {"type": "array", "items": _object({
            "index": INTEGER, "prompt_id": STRING, "state": STRING, "worker": nullable(STRING),
            "attempts": nullable(INTEGER), "values": OBJECT, "seconds": nullable(NUMBER),
            "error": nullable(STRING)}, ("index", "prompt_id", "state"))},
        "next": {**nullable(INTEGER), "description": "pass as after for the next page"},
    }, ("cells", "next")),
    "Readiness": _object({"status": {"type": "string", "enum": ["ready", "not ready"]},
                          "checks": {"type": "object", "additionalProperties": STRING}}, ("status", "checks")),
}
