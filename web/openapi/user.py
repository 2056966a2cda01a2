"""The editor's routes in the OpenAPI description: the user folder (/users, /userdata, /v2/userdata,
/settings, one folder per team), locales, templates, subgraphs, the model library and /internal."""

from __future__ import annotations

from web.openapi.parts import BOOLEAN_TEXT, STRING, answer, binary, failure, json_body, operation, path, query, ref

TAG = "User data"
EDITOR = "Editor"
STRINGS = {"type": "array", "items": STRING}
EMPTY_OBJECT = {"type": "object"}
KIND = {"type": "string", "enum": ["input", "output", "temp"]}
SAVED = "The file's path (a JSON string), or its info with full_info=true"
PATH_REFUSED = "An invalid path, or a folder in the way"


def _flag(name: str, description: str) -> dict:
    return query(name, BOOLEAN_TEXT, description)


def _saved() -> dict:
    return answer(SAVED, {"anyOf": [STRING, ref("UserFileInfo")]})


PATHS = {
    "/users": {
        "get": operation("users", "The user folder's mode (always one, migrated, user: the caller's team)", tag=TAG,
                         database=False,
                         responses={"200": answer("Storage mode", {"type": "object", "properties": {
                             "storage": STRING, "migrated": {"type": "boolean"}}, "required": ["storage"]})}),
        "post": operation("create_user", "Not supported: the farm's users are its API keys", tag=TAG,
                          database=False,
                          body=json_body({"type": "object", "properties": {"username": STRING}}, "A user name",
                                         required=False),
                          responses={"400": failure("Always: create a key instead")}),
    },
    "/userdata": {
        "get": operation(
            "list_userdata", "The files under a folder of the user folder", tag=TAG,
            params=(query("dir", STRING, "the folder", required=True), _flag("recurse", "include subfolders"),
                    _flag("full_info", "objects {path, size, modified, created}"),
                    _flag("split", "each path as [path, part, part, ...]")),
            responses={"200": answer("Relative paths (or infos, or split paths)", {"type": "array"}),
                       "400": failure("No dir, or an invalid one"), "403": {"$ref": "#/components/responses/Forbidden"},
                       "404": failure("Directory not found")}),
    },
    "/v2/userdata": {
        "get": operation(
            "list_userdata_v2", "The folders and files directly in a folder, folders first", tag=TAG,
            params=(query("path", STRING, "the folder (default: the root)"),),
            responses={"200": answer("Entries", {"type": "array", "items": ref("UserDataEntry")}),
                       "400": failure("An invalid path, or not a folder"),
                       "403": {"$ref": "#/components/responses/Forbidden"},
                       "404": failure("Directory not found")}),
    },
    "/userdata/{file}": {
        "get": operation(
            "read_userdata", "A file of the user folder", tag=TAG, params=(path("file", "its path, '/' as %2F",
                                                                                 STRING),),
            responses={"200": binary("The file: JSON, CSS or a download", "application/json", "text/css",
                                     "application/octet-stream"),
                       "400": failure(PATH_REFUSED), "403": {"$ref": "#/components/responses/Forbidden"},
                       "404": failure("File not found")}),
        "post": operation(
            "write_userdata", "Write a file of the user folder (the raw body is its content)", tag=TAG,
            params=(path("file", "its path, '/' as %2F", STRING), _flag("overwrite", "replace it (default true)"),
                    _flag("full_info", "answer with its info")),
            body={"description": "the file's content", "required": False,
                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            responses={"200": _saved(), "400": failure(PATH_REFUSED),
                       "403": {"$ref": "#/components/responses/Forbidden"},
                       "409": failure("File already exists (overwrite=false)")}),
        "delete": operation(
            "delete_userdata", "Delete a file of the user folder", tag=TAG,
            params=(path("file", "its path, '/' as %2F", STRING),),
            responses={"204": answer("Deleted"), "400": failure(PATH_REFUSED),
                       "403": {"$ref": "#/components/responses/Forbidden"}, "404": failure("File not found")}),
    },
    "/userdata/{file}/move/{target}": {
        "post": operation(
            "move_userdata", "Move a file of the user folder", tag=TAG,
            params=(path("file", "its path, '/' as %2F", STRING), path("target", "the new path", STRING),
                    _flag("overwrite", "replace a file at the target"), _flag("full_info", "answer with its info")),
            responses={"200": _saved(), "400": failure(PATH_REFUSED),
                       "403": {"$ref": "#/components/responses/Forbidden"}, "404": failure("File not found"),
                       "409": failure("File already exists (overwrite=false)")}),
    },
    "/settings": {
        "get": operation("read_settings", "The editor's settings (of the caller's team)", tag=TAG,
                         responses={"200": answer("Setting id -> value", EMPTY_OBJECT)}),
        "post": operation(
            "write_settings", "Change several settings (merged into the stored ones)", tag=TAG,
            body=json_body(EMPTY_OBJECT, "Setting id -> value"),
            responses={"200": answer("Stored (an empty body)"), "400": failure("Invalid JSON or not an object"),
                       "409": failure("The settings changed meanwhile; retry")}),
    },
    "/settings/{setting}": {
        "get": operation("read_setting", "One setting", tag=TAG, params=(path("setting", "its id", STRING),),
                         responses={"200": answer("Its value (null when unset)", {})}),
        "post": operation(
            "write_setting", "Change one setting", tag=TAG, params=(path("setting", "its id", STRING),),
            body=json_body({}, "Its value (any JSON; an empty body is null)", required=False),
            responses={"200": answer("Stored (an empty body)"), "400": failure("Invalid JSON"),
                       "409": failure("The settings changed meanwhile; retry")}),
    },
    "/i18n": {
        "get": operation("locales", "Custom nodes' locales (none: the farm loads no custom nodes' web folders)",
                         tag=EDITOR, database=False, responses={"200": answer("Always {}", EMPTY_OBJECT)}),
    },
    "/workflow_templates": {
        "get": operation("workflow_templates", "Custom nodes' example workflows (none)", tag=EDITOR, database=False,
                         responses={"200": answer("Always {}", EMPTY_OBJECT)}),
    },
    "/global_subgraphs": {
        "get": operation("global_subgraphs", "Custom nodes' subgraphs (none)", tag=EDITOR, database=False,
                         responses={"200": answer("Always {}", EMPTY_OBJECT)}),
    },
    "/global_subgraphs/{subgraph}": {
        "get": operation("global_subgraph", "One subgraph (never found)", tag=EDITOR, database=False,
                         params=(path("subgraph", "its id", STRING),),
                         responses={"404": failure("Subgraph not found")}),
    },
    "/node_replacements": {
        "get": operation("node_replacements", "Node replacements (none)", tag=EDITOR, database=False,
                         responses={"200": answer("Always {}", EMPTY_OBJECT)}),
    },
    "/experiment/models": {
        "get": operation("model_library", "The model folder types, with where the workers read them", tag=EDITOR,
                         database=False,
                         responses={"200": answer("Folders", {"type": "array", "items": {
                             "type": "object", "properties": {"name": STRING, "folders": STRINGS},
                             "required": ["name", "folders"]}})}),
    },
    "/experiment/models/{folder}": {
        "get": operation("model_library_folder", "The files of one model folder type", tag=EDITOR,
                         params=(path("folder", "a folder type (GET /models)"),),
                         responses={"200": answer("Files", {"type": "array", "items": {
                             "type": "object", "properties": {"name": STRING, "pathIndex": {"type": "integer"}},
                             "required": ["name", "pathIndex"]}}),
                             "404": failure("Unknown model folder")}),
    },
    "/internal/folder_paths": {
        "get": operation("folder_paths", "Each model folder type and where it is read", tag=EDITOR, database=False,
                         responses={"200": answer("Folder type -> paths", {
                             "type": "object", "additionalProperties": STRINGS})}),
    },
    "/internal/files/{kind}": {
        "get": operation("top_level_files", "The files at the top of the caller's input, output or temp folder",
                         tag=EDITOR, params=(path("kind", "the folder", KIND),),
                         responses={"200": answer("Names, newest first", STRINGS),
                                    "400": failure("Invalid file type")}),
    },
    "/internal/logs": {
        "get": operation("logs", "The server's log (none: each process logs to its own output)", tag=EDITOR,
                         database=False, responses={"200": answer("Always an empty string", STRING)}),
    },
    "/internal/logs/raw": {
        "get": operation("raw_logs", "The server's log entries (none)", tag=EDITOR, database=False,
                         responses={"200": answer("No entries", {"type": "object", "properties": {
                             "entries": {"type": "array"}, "size": {"type": "object"}},
                             "required": ["entries", "size"]})}),
    },
    "/internal/logs/subscribe": {
        "patch": operation("subscribe_logs", "Subscribe a socket to the log (a no-op)", tag=EDITOR, database=False,
                           body=json_body(EMPTY_OBJECT, "{enabled, clientId}", required=False),
                           responses={"200": answer("Always {}", EMPTY_OBJECT)}),
    },
}
