"""ComfyUI's own routes in the OpenAPI description (spec section 3): prompts, queue, history, files,
node schemas, models, system, the newer jobs API and the WebSocket's handshake."""

from __future__ import annotations

from web.openapi.parts import (INTEGER, JSON, STRING, answer, binary, failure, json_body, operation,
                               path, query, redirect, ref)

TAG = "ComfyUI"
JOBS = "Jobs"
STRINGS = {"type": "array", "items": STRING}
KIND = {"type": "string", "enum": ["input", "output", "temp"]}
DONE = "Done (an empty body)"
EXAMPLE_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 16711680}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ComfyUI"}},
}


def _text_error(description: str) -> dict:
    return answer(description, ref("TextError"))


def _upload_form(*extra: tuple[str, dict]) -> dict:
    properties = {
        "image": {"type": "string", "format": "binary", "description": "the file; its name is reduced to a basename"},
        "type": {**KIND, "description": "the folder (default input)"},
        "subfolder": {"type": "string", "description": "below the folder; it may not leave it"},
        "overwrite": {"type": "string", "description": "'true' or '1' replaces a file of the same name; otherwise "
                                                      "a same-content file is reused or the name gets ' (1)'"},
        **dict(extra),
    }
    return {"description": "multipart form", "required": True,
            "content": {"multipart/form-data": {"schema": {"type": "object", "properties": properties,
                                                           "required": ["image"]}}}}


PATHS = {
    "/prompt": {
        "get": operation("get_prompt", "How many prompts are queued or running", tag=TAG,
                         responses={"200": answer("The queue counter (as in the WebSocket's status)",
                                                  ref("QueueRemaining"))}),
        "post": operation(
            "post_prompt", "Validate and queue a prompt", tag=TAG, role="submit",
            description="The body is read as JSON whatever its Content-Type. `front` needs the operator role.",
            body=json_body(ref("PromptRequest"), "The prompt and how to queue it",
                           example={"prompt": EXAMPLE_PROMPT, "client_id": "openapi"}),
            responses={
                "200": answer("Queued; node_errors lists outputs that failed validation and will not run",
                              ref("PromptAccepted")),
                "400": failure("Invalid JSON, no prompt, an invalid prompt_id, a prompt_id used with another body, "
                               "or a prompt that failed validation (node_errors says where)"),
                "429": failure("The team has its max_queued prompts waiting (queue_quota_exceeded)"),
            }),
    },
    "/queue": {
        "get": operation(
            "get_queue", "The running and pending prompts (of the caller's team), in run order", tag=TAG,
            params=(query("limit", {"type": "integer", "minimum": 0, "maximum": 10000, "default": 200},
                          "at most this many pending prompts (more are cut to 10,000)"),
                    query("offset", {"type": "integer", "minimum": 0}, "skip this many pending prompts")),
            responses={"200": answer("Running and pending prompts", ref("Queue")),
                       "400": failure("limit or offset is not a whole number in range")}),
        "post": operation(
            "post_queue", "Clear the pending queue or delete pending prompts", tag=TAG,
            body=json_body(ref("ClearOrDelete"), "What to remove"),
            responses={"200": answer(DONE), "400": failure("Invalid JSON, not an object, or delete is not a list")}),
    },
    "/interrupt": {
        "post": operation(
            "post_interrupt", "Interrupt the running prompt (or every running prompt of the team)", tag=TAG,
            body=json_body({"type": "object", "properties": {"prompt_id": STRING}},
                           "Which prompt; a missing or broken body means every running prompt", required=False),
            responses={"200": answer(DONE)}),
    },
    "/free": {
        "post": operation(
            "post_free", "Ask every worker to unload models and free memory", tag=TAG, role="admin",
            body=json_body({"type": "object", "properties": {"unload_models": {"type": "boolean"},
                                                             "free_memory": {"type": "boolean"}}}, "What to free"),
            responses={"200": answer(DONE), "400": failure("Invalid JSON or not an object")}),
    },
    "/history": {
        "get": operation(
            "get_history", "Finished prompts (of the caller's team), oldest first", tag=TAG,
            description="max_items alone gives the most recent ones; with offset, a page from the oldest end.",
            params=(query("max_items", {"type": "integer", "maximum": 10000},
                          "at most this many entries (more are cut to FARM_HISTORY_MAX_ITEMS, 10,000)"),
                    query("offset", INTEGER, "skip this many of the oldest entries (negative: count from the end)")),
            responses={"200": answer("Entries by prompt id", ref("History")),
                       "400": failure("max_items or offset is not a whole number (or out of range)")}),
        "post": operation(
            "post_history", "Clear the history or delete entries", tag=TAG,
            body=json_body(ref("ClearOrDelete"), "What to remove"),
            responses={"200": answer(DONE), "400": failure("Invalid JSON, not an object, or delete is not a list")}),
    },
    "/history/{prompt_id}": {
        "get": operation("get_history_entry", "One finished prompt", tag=TAG,
                         params=(path("prompt_id", "the prompt's id", STRING),),
                         responses={"200": answer("{prompt_id: entry}, or {} when it is unknown or not finished",
                                                  ref("History"))}),
    },
    "/view": {
        "get": operation(
            "view", "A stored file, or an image converted", tag=TAG,
            description="ComfyUI's rules: a filename ending in ' [output]', ' [input]' or ' [temp]' names its "
                        "folder; only its basename counts. Active content (HTML, SVG, scripts) is a download.",
            params=(query("filename", STRING, "the file's name", required=True),
                    query("type", KIND, "its folder (default output)"),
                    query("subfolder", STRING, "below the folder"),
                    query("preview", STRING, "'webp' or 'jpeg', optionally ';<quality>': a converted preview"),
                    query("channel", STRING, "'rgb' (no alpha) or 'a' (the alpha alone), as PNG"),
                    query("team", STRING, "another team's files (admins only)")),
            responses={"200": binary("The file, or the converted image", "*/*"),
                       "302": redirect("A presigned URL of the file (S3 storage)"),
                       "400": failure("An invalid filename, type or team, or not an image that can be converted"),
                       "403": {"$ref": "#/components/responses/Forbidden"},
                       "404": failure("No filename, or no such file")}),
    },
    "/upload/image": {
        "post": operation(
            "upload_image", "Upload a file into the input (or temp, output) folder", tag=TAG,
            body=_upload_form(),
            responses={"200": answer("Stored under this name", ref("Uploaded")),
                       "400": failure("No image part, no usable filename, an invalid type or a subfolder that "
                                      "leaves the folder")}),
    },
    "/upload/mask": {
        "post": operation(
            "upload_mask", "Upload a mask: the original image with the mask's alpha, stored as PNG", tag=TAG,
            body=_upload_form(("original_ref", {"type": "string", "contentMediaType": JSON,
                                                "description": 'JSON {"filename", "subfolder"?, "type"?} of the '
                                                               "original image"})),
            responses={"200": answer("Stored under this name", ref("Uploaded")),
                       "400": failure("A missing part or original_ref, an invalid path, or an unreadable image"),
                       "403": {"$ref": "#/components/responses/Forbidden"},
                       "404": failure("The original image is not found")}),
    },
    "/object_info": {
        "get": operation("object_info", "Every node class's schema", tag=TAG,
                         responses={"200": answer("Node schemas", ref("ObjectInfo"))}),
    },
    "/object_info/{node_class}": {
        "get": operation("object_info_one", "One node class's schema", tag=TAG,
                         params=(path("node_class", "the class name", STRING),),
                         responses={"200": answer("{class: schema}, or {} for an unknown class", ref("ObjectInfo"))}),
    },
    "/models": {
        "get": operation("model_folders", "The model folder types", tag=TAG, database=False,
                         responses={"200": answer("Folder type names", STRINGS)}),
    },
    "/models/{folder}": {
        "get": operation("model_files", "The files of one model folder type (as the live workers report them)",
                         tag=TAG, params=(path("folder", "a folder type (GET /models)"),),
                         responses={"200": answer("Relative paths", STRINGS),
                                    "404": failure("Unknown model folder")}),
    },
    "/embeddings": {
        "get": operation("embeddings", "Embedding names, without their extension", tag=TAG,
                         responses={"200": answer("Names", STRINGS)}),
    },
    "/extensions": {
        "get": operation("extensions", "The editor's extension scripts", tag=TAG, database=False,
                         responses={"200": answer("Script URLs", STRINGS)}),
    },
    "/system_stats": {
        "get": operation("system_stats", "The web host, and one device per live worker", tag=TAG,
                         responses={"200": answer("System and devices", ref("SystemStats"))}),
    },
    "/features": {
        "get": operation("features", "The server's feature flags", tag=TAG, database=False,
                         responses={"200": answer("Feature flags", ref("Features"))}),
    },
    "/ws": {
        "get": operation(
            "websocket", "ComfyUI's WebSocket (status, progress, executed, previews ...)", tag=TAG,
            description="An HTTP GET that upgrades to a WebSocket (RFC 6455); a GET without the upgrade "
                        "headers is refused. Browsers may send the key as ?token=.",
            params=(query("clientId", STRING, "the session id; prompts sent with this client_id report here"),
                    query("subscribe", STRING, "prompt ids (comma-separated) or 'all': also follow those prompts"),
                    query("token", STRING, "an API key, for clients that cannot set headers")),
            responses={"101": answer("Switching protocols"),
                       "400": answer("Not a WebSocket handshake"),
                       "503": failure("This web process holds all the WebSockets it may")}),
    },
    "/api/jobs": {
        "get": operation(
            "list_jobs", "Prompts as jobs: listed, filtered and paged", tag=JOBS,
            params=(query("status", STRING, "comma-separated: pending, in_progress, completed, failed, cancelled"),
                    query("workflow_id", STRING, "only jobs whose workflow (extra_pnginfo.workflow.id) has this id"),
                    query("sort_by", {"type": "string", "enum": ["created_at", "execution_duration"]}, "order by"),
                    query("sort_order", {"type": "string", "enum": ["asc", "desc"]}, "default desc"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                          "at most this many jobs (more are cut to 1,000)"),
                    query("offset", {"type": "integer", "minimum": 0}, "skip this many jobs"),
                    query("cursor", STRING, "an opaque position: pagination.next_cursor of the previous page "
                                            "(with sort_by=created_at)")),
            responses={"200": answer("A page of jobs", ref("JobList")),
                       "400": _text_error("An invalid status, sort, limit, offset or cursor")}),
    },
    "/api/jobs/{job_id}": {
        "get": operation("get_job", "One job, with its outputs and workflow", tag=JOBS,
                         params=(path("job_id", "the prompt id"),),
                         responses={"200": answer("The job", ref("JobDetail")),
                                    "404": _text_error("Job not found")}),
    },
    "/api/jobs/{job_id}/cancel": {
        "post": operation("cancel_job", "Dequeue a pending job or interrupt a running one", tag=JOBS,
                          params=(path("job_id", "the prompt id"),),
                          responses={"200": answer("Whether anything was cancelled", {
                              "type": "object", "properties": {"cancelled": {"type": "boolean"}},
                              "required": ["cancelled"]})}),
    },
    "/api/jobs/cancel": {
        "post": operation(
            "cancel_jobs", "Cancel several jobs", tag=JOBS,
            body=json_body({"type": "object", "properties": {"job_ids": {"type": "array", "items": ref("Uuid")}},
                            "required": ["job_ids"]}, "The jobs"),
            responses={"200": answer("Whether anything was cancelled", {
                "type": "object", "properties": {"cancelled": {"type": "boolean"}}, "required": ["cancelled"]}),
                "400": _text_error("Not JSON, no job_ids list, or invalid ids (invalid_ids lists them)")}),
    },
}
