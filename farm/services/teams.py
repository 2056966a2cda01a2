"""Teams and their API keys: create, change, list, revoke, and turn a presented key into a principal.

A key is `cfk_` plus 40 random URL-safe characters. Only its SHA-256 is stored (a key is random
enough that a slow hash adds nothing), with a short display prefix for lists and the audit log.
Lookups are cached per process for KEY_CACHE_SECONDS, so a revoked key stops working within
that time everywhere, and a request costs no database read for its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import threading
import time

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from farm.db.clock import db_now
from farm.db.models import ApiKey, Team
from farm.services import audit, webhooks
from farm.services.principal import ROLES, Principal

KEY_PREFIX = "cfk_"
DISPLAY_CHARS = 12  # "cfk_" and 8 random characters: enough to tell keys apart, useless to guess with
KEY_CACHE_SECONDS = 5.0
TEAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # also a folder name (farm.storage)
LIMIT_FIELDS = ("share", "burst", "max_queued", "max_running", "max_priority")


class TeamError(ValueError):
    """A team or key request that cannot be done (unknown, duplicate, out of range)."""


@dataclasses.dataclass(frozen=True)
class TeamLimits:
    share: float = 1.0
    burst: int | None = None
    max_queued: int | None = None
    max_running: int | None = None
    max_priority: int = 50
    webhook: str | None = None  # every prompt and batch event of the team is posted here


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_limits(limits: TeamLimits) -> None:
    if limits.share < 0:
        raise TeamError("share must be 0 or more (worker slots the team is guaranteed)")
    for name in ("burst", "max_queued", "max_running"):
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise TeamError(f"{name} must be 0 or more, or unset for no limit")
    if not 0 <= limits.max_priority <= 100:
        raise TeamError("max_priority must be within 0-100")
    if limits.webhook is not None and not str(limits.webhook).startswith(("http://", "https://")):
        raise TeamError(f"webhook must be an http(s) URL, got {limits.webhook!r}")


def team_dict(row: Team) -> dict:
    return {"name": row.name, "share": row.share, "burst": row.burst, "max_queued": row.max_queued,
            "max_running": row.max_running, "max_priority": row.max_priority, "webhook": row.webhook,
            "created_at": row.created_at.isoformat() if row.created_at else None}


def create_team(database, name: str, limits: TeamLimits, actor: Principal) -> dict:
    actor.require("admin", "creating teams")
    if not TEAM_NAME.match(name or ""):
        raise TeamError(f"team names are 1-63 lowercase letters, digits, '-' and '_', starting with a "
                        f"letter or digit: {name!r}")
    _check_limits(limits)
    try:
        with database.write() as session:
            row = Team(name=name, created_at=db_now(), webhook_secret=webhooks.new_secret(),
                       **dataclasses.asdict(limits))
            session.add(row)
            session.flush()
            audit.record(session.connection(), actor, "team.create", f"team:{name}", dataclasses.asdict(limits))
            result = team_dict(row)
    except IntegrityError:
        raise TeamError(f"team {name!r} exists already") from None
    return result


def update_team(database, name: str, changes: dict, actor: Principal) -> dict:
    actor.require("admin", "changing a team's share and limits")
    allowed = {field.name for field in dataclasses.fields(TeamLimits)}
    unknown = set(changes) - allowed
    if unknown:
        raise TeamError(f"unknown team settings: {sorted(unknown)}")
    with database.write() as session:
        row = session.get(Team, name)
        if row is None:
            raise TeamError(f"no team {name!r}")
        current = {field: getattr(row, field) for field in allowed}
        _check_limits(TeamLimits(**{**current, **changes}))
        for field, value in changes.items():
            setattr(row, field, value)
        audit.record(session.connection(), actor, "team.update", f"team:{name}", changes)
        return team_dict(row)


def webhook_secret(database, name: str) -> str:
    """The secret `name`'s webhooks are signed with (for its receivers to verify them)."""
    with database.reading() as session:
        row = session.get(Team, name)
    if row is None:
        raise TeamError(f"no team {name!r}")
    return row.webhook_secret


def list_teams(database) -> list[dict]:
    with database.reading() as session:
        return [team_dict(row) for row in session.execute(select(Team).order_by(Team.name)).scalars()]


def team_exists(database, name: str) -> bool:
    with database.reading() as session:
        return session.get(Team, name) is not None


def key_dict(row: ApiKey) -> dict:
    return {"id": row.id, "prefix": row.prefix, "team": row.team, "role": row.role, "label": row.label,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}


def create_key(database, team: str, role: str, label: str, actor: Principal) -> tuple[str, dict]:
    """A new key for `team` with `role`: (the secret, shown once and never stored, its listing)."""
    actor.require("admin", "creating keys")
    if role not in ROLES:
        raise TeamError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    secret = KEY_PREFIX + secrets.token_urlsafe(30)
    with database.write() as session:
        if session.get(Team, team) is None:
            raise TeamError(f"no team {team!r} (farm teams create {team})")
        row = ApiKey(team=team, role=role, label=label or "", prefix=secret[:DISPLAY_CHARS],
                     secret_hash=key_hash(secret), created_at=db_now())
        session.add(row)
        session.flush()
        audit.record(session.connection(), actor, "key.create", f"key:{row.prefix}", {"team": team, "role": role})
        return secret, key_dict(row)


def list_keys(database, team: str | None = None, include_revoked: bool = False) -> list[dict]:
    query = select(ApiKey).order_by(ApiKey.team, ApiKey.id)
    if team is not None:
        query = query.where(ApiKey.team == team)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    with database.reading() as session:
        return [key_dict(row) for row in session.execute(query).scalars()]


def revoke_key(database, which: str, actor: Principal) -> dict:
    """Revoke the key with this id or display prefix (a whole secret works too)."""
    actor.require("admin", "revoking keys")
    condition = ApiKey.prefix == which[:DISPLAY_CHARS] if which.startswith(KEY_PREFIX) else ApiKey.id == _int(which)
    with database.write() as session:
        rows = session.execute(select(ApiKey).where(condition)).scalars().all()
        if not rows:
            raise TeamError(f"no key {which!r}")
        if len(rows) > 1:
            raise TeamError(f"{which!r} names {len(rows)} keys; give the key's id")
        row = rows[0]
        if row.revoked_at is None:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=db_now()))
            audit.record(session.connection(), actor, "key.revoke", f"key:{row.prefix}", {"team": row.team})
        session.flush()
        session.refresh(row)
        return key_dict(row)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TeamError(f"a key is named by its id or its prefix ({KEY_PREFIX}...), got {text!r}") from None


class KeyRing:
    """Presented keys -> principals, cached for KEY_CACHE_SECONDS (misses too, so a flood of bad
    keys costs one read per key and interval)."""

    def __init__(self, database, ttl: float = KEY_CACHE_SECONDS):
        self.database = database
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def principal(self, secret: str) -> Principal | None:
        return self.principal_by_hash(key_hash(secret))

    def principal_by_hash(self, digest: str) -> Principal | None:
        """The same, from the key's SHA-256 (what a dashboard session holds instead of the key)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with self.database.reading() as session:
            row = session.execute(
                select(ApiKey.team, ApiKey.role, ApiKey.prefix)
                .where(ApiKey.secret_hash == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
        found = None if row is None else Principal(row.team, row.role, row.prefix)
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[digest] = (now, found)
        return found

