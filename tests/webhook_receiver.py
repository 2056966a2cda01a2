"""A local HTTP server that records webhook posts and answers with the status codes it is given."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading


class Receiver:
    def __init__(self, statuses=()):
        self.statuses = list(statuses)  # answers to give in turn, then 200
        self.posts: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[str, dict]]:
        return [(json.loads(post["body"])["type"], json.loads(post["body"])["data"]) for post in self.posts]


def verified(post: dict, secret: str) -> bool:
    """Whether a post carries a valid Standard Webhooks signature for `secret` (checked here from
    the scheme's definition, not with the farm's own signing code)."""
    headers = {key.lower(): value for key, value in post["headers"].items()}
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + post["body"]
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part == f"v1,{expected}" for part in headers["webhook-signature"].split(" "))
