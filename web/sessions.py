"""The dashboard's session cookie: signed with the farm's secret key, HTTP-only, SameSite=Lax, and
Secure when the request came over HTTPS (or always with FARM_COOKIE_SECURE=1). It holds the
signed-in key's SHA-256 (never the key) and the CSRF token of the session's forms."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import request
from flask.sessions import SecureCookieSessionInterface

SECRET_FILE = "secret_key"


def secret_key(settings) -> str:
    """FARM_SECRET_KEY, or a random one made once and kept (mode 0600) in the data folder, so every
    web process of this host signs alike and sessions survive restarts."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class FarmSessions(SecureCookieSessionInterface):
    def open_session(self, app, request):
        # API clients send no cookie: nothing to verify, so the signer is not even built (every
        # POST /prompt would pay for it).
        if app.config["SESSION_COOKIE_NAME"] not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response) -> None:
        if not session and not session.modified and not session.accessed:
            return  # nothing was read or written: no cookie to set, none to vary on
        super().save_session(app, session, response)

    def get_cookie_secure(self, app) -> bool:
        setting = str(app.config.get("FARM_COOKIE_SECURE", "auto")).lower()
        if setting == "auto":
            return request.is_secure
        return setting in ("1", "true", "yes", "on")


def register(app, settings) -> None:
    app.secret_key = secret_key(settings)
    app.config.update(SESSION_COOKIE_NAME="farm_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", FARM_COOKIE_SECURE=settings.cookie_secure)
    app.session_interface = FarmSessions()


def csrf_token() -> str:
    from flask import session

    token = session.get("csrf")
    if token is None:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token
