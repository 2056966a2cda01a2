"""Who a request acts as: a team and a role (from an API key), or the local user when auth is off.

Roles rise: `submit` (submit, follow and cancel the team's work), `operator` (also `front`,
priorities above the team's limit, acting on any of the team's batches), `admin` (everything,
every team: workers, dispatch, teams, keys, the audit log). Service functions take a principal
and filter by its team; the web never filters on its own.
"""

from __future__ import annotations

import dataclasses

ROLES = ("submit", "operator", "admin")
DEFAULT_TEAM = "default"


class Forbidden(Exception):
    """The principal lacks the role an action needs (HTTP 403)."""

    def __init__(self, needed: str, action: str):
        super().__init__(f"{action} needs the {needed} role")
        self.needed, self.action = needed, action


@dataclasses.dataclass(frozen=True)
class Principal:
    team: str
    role: str
    actor: str  # what the audit log names: "local", or the key's display prefix

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def require(self, role: str, action: str) -> None:
        if not self.can(role):
            raise Forbidden(role, action)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The team whose objects this principal sees, or None for all of them (admins)."""
        return None if self.is_admin else self.team

    def sees(self, team: str | None) -> bool:
        return self.is_admin or (team or DEFAULT_TEAM) == self.team


# Auth off (a farm on loopback, as ComfyUI): one user who may do everything, in the default team.
LOCAL = Principal(DEFAULT_TEAM, "admin", "local")
