"""The farm's own routes in the OpenAPI description: workers and dispatch, teams, keys and the audit
log, batches, probes, metrics and this description itself."""

from __future__ import annotations

from web.openapi.comfyui import EXAMPLE_PROMPT
from web.openapi.parts import (INTEGER, JSON, STRING, answer, binary, failure, json_body, operation, path, query,
                               ref)

WORKERS, TEAMS, BATCHES, OPS = "Workers", "Teams and keys", "Batches", "Operations"
ROLE = {"type": "string", "enum": ["submit", "operator", "admin"]}
BATCH_ACTION = {"type": "string", "enum": ["pause", "resume", "cancel", "retry", "priority"]}
BATCH_STATE = {"type": "string", "enum": ["queued", "running", "paused", "done", "failed", "cancelled"]}
UNKNOWN_BATCH = "Batch not found (another team's is not found either)"


def _batch_id() -> dict:
    return path("batch_id", "the batch's id")


PATHS = {
    "/api/workers": {
        "get": operation("list_workers", "Every worker, live or dead, with what it runs", tag=WORKERS, role="admin",
                         responses={"200": answer("Workers, live workers by version, and dispatch", ref("Workers"))}),
    },
    "/api/workers/{name}": {
        "get": operation("get_worker", "One worker", tag=WORKERS, role="admin",
                         params=(path("name", "the worker's name"),),
                         responses={"200": answer("The worker", ref("Worker")), "404": failure("Unknown worker")}),
    },
    "/api/workers/{name}/{action}": {
        "post": operation(
            "steer_worker", "Drain a worker (it finishes its prompt and takes no more), lock or unlock it",
            tag=WORKERS, role="admin",
            params=(path("name", "the worker's name"),
                    path("action", "what to do", {"type": "string", "enum": ["drain", "lock", "unlock"]})),
            body=json_body({"type": "object", "properties": {"reason": STRING}}, "lock: why (optional)",
                           required=False),
            responses={"200": answer("The worker after it", ref("Worker")),
                       "404": failure("Unknown worker or action")}),
    },
    "/api/dispatch": {
        "get": operation("dispatch_state", "Whether dispatch is paused", tag=WORKERS, role="admin",
                         responses={"200": answer("Dispatch", ref("Dispatch"))}),
    },
    "/api/dispatch/{action}": {
        "post": operation("steer_dispatch", "Pause or resume dispatch (queued prompts wait; running ones go on)",
                          tag=WORKERS, role="admin",
                          params=(path("action", "what to do", {"type": "string", "enum": ["pause", "resume"]}),),
                          responses={"200": answer("Dispatch after it", ref("Dispatch")),
                                     "404": failure("Unknown dispatch action")}),
    },
    "/api/me": {
        "get": operation("me", "Who the caller is: team, role, and whether the farm needs keys", tag=TEAMS,
                         database=False, responses={"200": answer("The caller", ref("Me"))}),
    },
    "/api/teams": {
        "get": operation("list_teams", "The teams (admins see every team, others their own)", tag=TEAMS,
                         responses={"200": answer("Teams", {"type": "object", "properties": {
                             "teams": {"type": "array", "items": ref("Team")}}, "required": ["teams"]})}),
        "post": operation(
            "create_team", "Create a team", tag=TEAMS, role="admin",
            body=json_body({"allOf": [ref("TeamLimits"), {"type": "object", "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}}, "required": ["name"]}]},
                "Its name, share and limits", example={"name": "lookdev", "share": 2, "max_queued": 500}),
            responses={"201": answer("The team", ref("Team")),
                       "400": failure("Invalid JSON, a bad name or limit, or the team exists already")}),
    },
    "/api/teams/{name}": {
        "patch": operation(
            "update_team", "Change a team's share and limits", tag=TEAMS, role="admin",
            params=(path("name", "the team"),), body=json_body(ref("TeamLimits"), "The settings to change"),
            responses={"200": answer("The team after it", ref("Team")),
                       "400": failure("Invalid JSON, an unknown or bad setting, or no such team")}),
    },
    "/api/teams/{name}/webhook-secret": {
        "get": operation("team_webhook_secret", "The secret the team's webhooks are signed with", tag=TEAMS,
                         role="admin", params=(path("name", "the team"),),
                         responses={"200": answer("The secret", {"type": "object", "properties": {
                             "team": STRING, "secret": STRING}, "required": ["team", "secret"]}),
                             "404": failure("No such team")}),
    },
    "/api/keys": {
        "get": operation(
            "list_keys", "The API keys (never their secrets)", tag=TEAMS, role="admin",
            params=(query("team", STRING, "only this team's"),
                    query("revoked", {"type": "string", "enum": ["1", "true", "0", "false"]}, "include revoked keys")),
            responses={"200": answer("Keys", {"type": "object", "properties": {
                "keys": {"type": "array", "items": ref("Key")}}, "required": ["keys"]})}),
        "post": operation(
            "create_key", "Create an API key; its secret is in this answer only", tag=TEAMS, role="admin",
            body=json_body({"type": "object", "properties": {"team": STRING, "role": ROLE, "label": STRING},
                            "required": ["team"]}, "Its team, role (default submit) and label",
                           example={"team": "default", "role": "submit", "label": "render node"}),
            responses={"201": answer("The key, with its secret as key", {"allOf": [ref("Key"), {
                "type": "object", "properties": {"key": STRING}, "required": ["key"]}]}),
                "400": failure("Invalid JSON, no such team, or an unknown role")}),
    },
    "/api/keys/{which}/revoke": {
        "post": operation("revoke_key", "Revoke a key (within seconds on every web process)", tag=TEAMS,
                          role="admin", params=(path("which", "the key's id or its display prefix"),),
                          responses={"200": answer("The key after it", ref("Key")),
                                     "404": failure("No such key, or a prefix naming several")}),
    },
    "/api/audit": {
        "get": operation(
            "audit_log", "The audit log, newest first", tag=TEAMS, role="admin",
            params=(query("before", INTEGER, "entries older than this id (the previous page's next)"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                          "at most this many (more are cut to 500)"),
                    query("action", STRING, "actions starting with this (team., key., batch. ...)"),
                    query("team", STRING, "only what this team's keys did")),
            responses={"200": answer("A page of entries", ref("AuditPage")),
                       "400": failure("before or limit is not a whole number")}),
    },
    "/api/batches": {
        "get": operation(
            "list_batches", "Batches (of the caller's team), newest first", tag=BATCHES,
            params=(query("team", STRING, "admins: only this team's"), query("state", BATCH_STATE, "only these"),
                    query("name", STRING, "names containing this"),
                    query("before", STRING, "after this batch id (the previous page's next)"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                          "at most this many")),
            responses={"200": answer("A page of batches", ref("BatchPage")),
                       "400": failure("An unknown state or a limit that is not a whole number")}),
        "post": operation(
            "create_batch", "Submit a batch: one workflow swept over values or rows, or a list of workflows",
            tag=BATCHES,
            body={"description": "JSON, or multipart with the batch as the JSON field 'batch' and its rows as a "
                                 "CSV or JSON Lines file 'rows'", "required": True,
                  "content": {JSON: {"schema": ref("BatchRequest"), "example": {
                      "workflow": EXAMPLE_PROMPT, "name": "widths", "sweep": {"1.width": [8, 16]}}},
                              "multipart/form-data": {"schema": {"type": "object", "properties": {
                                  "batch": {"type": "string", "contentMediaType": JSON},
                                  "rows": {"type": "string", "format": "binary"}}, "required": ["batch"]}}}},
            responses={"201": answer("Stored: its id and cells", ref("BatchCreated")),
                       "200": answer("dry_run: the cells it would make and an estimate", ref("BatchEstimate")),
                       "400": failure("Invalid JSON, or an invalid batch or cell (extra_info names the cell)"),
                       "403": {"$ref": "#/components/responses/Forbidden"},
                       "429": failure("The team's queue quota would be passed")}),
    },
    "/api/batches/actions": {
        "post": operation(
            "batch_bulk_action", "One action on several batches", tag=BATCHES,
            body=json_body({"type": "object", "properties": {
                "ids": {"type": "array", "items": STRING, "minItems": 1}, "action": BATCH_ACTION,
                "priority": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["ids", "action"]},
                "The batches, the action, and the priority for action priority"),
            responses={"200": answer("The batches after it", {"type": "object", "properties": {
                "batches": {"type": "array", "items": ref("Batch")}}, "required": ["batches"]}),
                "400": failure("Invalid JSON, no ids or action, or a bad priority"),
                "404": failure("A batch is not found, or an unknown action")}),
    },
    "/api/batches/{batch_id}": {
        "get": operation("get_batch", "One batch, with its outputs, failing workers and webhooks", tag=BATCHES,
                         params=(_batch_id(),),
                         responses={"200": answer("The batch", ref("BatchDetail")), "404": failure(UNKNOWN_BATCH)}),
    },
    "/api/batches/{batch_id}/cells": {
        "get": operation(
            "get_batch_cells", "A batch's cells in index order", tag=BATCHES,
            params=(_batch_id(), query("after", INTEGER, "cells after this index (the previous page's next)"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                          "at most this many")),
            responses={"200": answer("A page of cells", ref("CellPage")),
                       "400": failure("after or limit is not a whole number"), "404": failure(UNKNOWN_BATCH)}),
    },
    "/api/batches/{batch_id}/outputs.zip": {
        "get": operation("batch_outputs_zip", "Every output of a batch, as a zip", tag=BATCHES,
                         params=(_batch_id(),),
                         responses={"200": binary("The zip (streamed)", "application/zip"),
                                    "404": failure(UNKNOWN_BATCH)}),
    },
    "/api/batches/{batch_id}/sheet.png": {
        "get": operation(
            "batch_contact_sheet", "A contact sheet of a batch's images", tag=BATCHES,
            params=(_batch_id(), query("limit", {"type": "integer", "minimum": 1, "default": 400},
                                       "at most this many cells")),
            responses={"200": binary("The sheet", "image/png"), "400": failure("limit is not a whole number"),
                       "404": failure(UNKNOWN_BATCH)}),
    },
    "/api/batches/{batch_id}/blocklist/{worker}": {
        "delete": operation("batch_unblock_worker", "Let a worker take the batch's cells again", tag=BATCHES,
                            params=(_batch_id(), path("worker", "the worker's name")),
                            responses={"200": answer("The batch after it", ref("BatchDetail")),
                                       "404": failure("Batch not found, or the worker has no failures on it")}),
    },
    "/api/batches/{batch_id}/{action}": {
        "post": operation(
            "batch_action", "Pause, resume, cancel or retry a batch, or set its priority", tag=BATCHES,
            params=(_batch_id(), path("action", "what to do", BATCH_ACTION)),
            body=json_body({"type": "object", "properties": {
                "priority": {"type": "integer", "minimum": 0, "maximum": 100},
                "cells": {"type": "array", "items": INTEGER, "description": "retry: only these cells"}}},
                "priority: the new priority; retry: optionally the cells", required=False),
            responses={"200": answer("The batch after it", ref("Batch")),
                       "400": failure("A bad priority or cells"),
                       "404": failure("Batch not found, or an unknown action")}),
    },
    "/healthz": {
        "get": operation("healthz", "The process answers (liveness)", tag=OPS, public=True, database=False,
                         responses={"200": answer("Alive", {"type": "object", "properties": {
                             "status": {"const": "ok"}}, "required": ["status"]})}),
    },
    "/readyz": {
        "get": operation("readyz", "The farm can serve: database at the migrations' head, broker, storage", tag=OPS,
                         public=True, database=False,
                         responses={"200": answer("Ready", ref("Readiness")),
                                    "503": answer("Not ready: the error shape, with status and checks",
                                                  {"allOf": [ref("Error"), ref("Readiness")]})}),
    },
    "/metrics": {
        "get": operation("metrics", "Prometheus metrics of the farm and its web processes", tag=OPS, role="admin",
                         responses={"200": {"description": "Prometheus text exposition",
                                            "content": {"text/plain": {"schema": STRING}}}}),
    },
    "/openapi.json": {
        "get": operation("openapi", "This description", tag=OPS, public=True, database=False,
                         responses={"200": answer("OpenAPI 3.1", {"type": "object", "required": ["openapi", "paths"]})}),
    },
}
