"""Request guards in front of every route: ComfyUI's origin check or its CORS mode, and OPTIONS.

Invariant: a browser page from another site cannot make the API act. By default, as in ComfyUI,
a request to a loopback Host whose Origin names another host:port gets a 403 with an empty body,
and so does any request the browser marks `Sec-Fetch-Site: cross-site`; a server reached by a LAN
address or a public name gets no origin check (ComfyUI's rule: it trusts its network then). With
`--enable-cors-header` cross-origin use is wanted, so both checks are off and every response
carries the CORS headers instead. OPTIONS never reaches a handler. The hooks are app-wide, so
unknown paths and the WebSocket handshake (a GET) are guarded too.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from urllib.parse import urlsplit

from flask import Response, request

CORS_METHODS = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
CORS_HEADERS = "Content-Type, Authorization"
RESOLVE_TTL_SECONDS = 60.0
RESOLVE_CACHE_SIZE = 256


def register(app, settings) -> None:
    """Install the guards for `settings.enable_cors_header` (None: origin check; an origin: CORS)."""
    origin = getattr(settings, "enable_cors_header", None)
    if origin:
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Allow-Credentials": "true",
        }

        @app.before_request
        def answer_preflight():
            if request.method == "OPTIONS":
                return _empty(200)
            return None

        @app.after_request
        def add_cors_headers(response):
            response.headers.update(headers)
            return response
    else:
        resolver = LoopbackResolver()

        @app.before_request
        def check_origin():
            # The browser's own verdict comes first, on every path and method (ComfyUI's newer rule).
            if request.headers.get("Sec-Fetch-Site") == "cross-site":
                return _empty(403)
            if request.method == "OPTIONS":
                return _empty(200)
            if not origin_allowed(request.headers.get("Host"), request.headers.get("Origin"), resolver):
                return _empty(403)
            return None


def _empty(status: int) -> Response:
    return Response(b"", status=status, mimetype="text/plain")


def origin_allowed(host: str | None, origin: str | None, resolver: "LoopbackResolver") -> bool:
    """ComfyUI's origin rule for a request to `host` from `origin`, refusing `Origin: null` too."""
    if not host or not origin:
        return True
    host_name, host_port = split_host_port(host.lower())
    if not resolver.is_loopback(host_name):
        return True
    try:
        origin_name, origin_port = split_host_port(urlsplit(origin.lower()).netloc)
    except ValueError:
        origin_name, origin_port = "", ""
    if not origin_name:
        # "null" (sandboxed frames, file: pages) and unparsable origins: ComfyUI lets them through
        # (CVE-2026-56674); the farm refuses them on loopback hosts.
        return False
    if not host_port or not origin_port:
        host_port = origin_port = ""
    return (host_name, host_port) == (origin_name, origin_port)


def split_host_port(netloc: str) -> tuple[str, str]:
    """`name:port`, `[v6]:port` or a bare name as (name, port) strings; the port may be ""."""
    netloc = netloc.rpartition("@")[2]
    if netloc.startswith("["):
        name, _, rest = netloc[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    if netloc.count(":") > 1:  # a bare IPv6 literal has no port
        return netloc, ""
    name, _, port = netloc.partition(":")
    return name, port


class LoopbackResolver:
    """Whether a hostname means this machine's loopback, with name lookups cached briefly.

    IP literals and `localhost` need no lookup; other names are resolved at most once a minute,
    so a Host header does not cost a DNS query on every request.
    """

    def __init__(self, ttl: float = RESOLVE_TTL_SECONDS):
        self.ttl = ttl
        self._cache: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def is_loopback(self, name: str) -> bool:
        if not name:
            return False
        try:
            return _loopback_address(name)
        except ValueError:
            pass
        name = name.rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return True
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = self._resolve(name)
        with self._lock:
            if len(self._cache) >= RESOLVE_CACHE_SIZE:
                self._cache.clear()
            self._cache[name] = (now + self.ttl, answer)
        return answer

    def _resolve(self, name: str) -> bool:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
        except (OSError, UnicodeError):
            return False
        try:
            return bool(addresses) and all(_loopback_address(address) for address in addresses)
        except ValueError:
            return False


def _loopback_address(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%")[0])
    # Python before 3.13 calls ::ffff:127.0.0.1 not loopback, yet it reaches a dual-stack loopback socket.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
