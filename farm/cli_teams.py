"""`farm teams create | ls | set` and `farm keys create | ls | revoke`: run on a host that reaches the
farm's database (FARM_DATABASE_URL), as `farm db upgrade` is, so the first admin key can be made
before any key exists. Each change is in the audit log as `cli:<user>@<host>`."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys

from farm.services.principal import ROLES, Principal


def add_commands(commands) -> None:
    teams = commands.add_parser("teams", help="create, list and change teams (on the farm's database)")
    team_actions = teams.add_subparsers(dest="teams_command", required=True)
    create = team_actions.add_parser("create", help="a new team")
    create.add_argument("name", help="lowercase letters, digits, '-' and '_'")
    _add_limits(create)
    listing = team_actions.add_parser("ls", help="every team with its share and limits")
    listing.add_argument("--json", action="store_true")
    change = team_actions.add_parser("set", help="change a team's share and limits")
    change.add_argument("name")
    _add_limits(change)
    secret = team_actions.add_parser("secret", help="the secret the team's webhooks are signed with")
    secret.add_argument("name")

    keys = commands.add_parser("keys", help="create, list and revoke API keys (on the farm's database)")
    key_actions = keys.add_subparsers(dest="keys_command", required=True)
    create_key = key_actions.add_parser("create", help="a new key; its secret is printed once")
    create_key.add_argument("--team", required=True)
    create_key.add_argument("--role", choices=ROLES, default="submit")
    create_key.add_argument("--label", default="", help="who or what the key is for")
    key_listing = key_actions.add_parser("ls", help="the keys (never their secrets)")
    key_listing.add_argument("--team")
    key_listing.add_argument("--all", action="store_true", help="revoked keys too")
    key_listing.add_argument("--json", action="store_true")
    revoke = key_actions.add_parser("revoke", help="a key stops working (within seconds on every web process)")
    revoke.add_argument("key", help="the key's id or its prefix (cfk_...)")
    for parser in (create, listing, change, secret, create_key, key_listing, revoke):
        parser.add_argument("--data-dir", help="data folder (for the default SQLite database); FARM_DATA_DIR")


def _add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--share", type=float, help="worker slots the team is guaranteed (default 1)")
    parser.add_argument("--burst", type=_limit, help="the most worker slots it may hold ('none': no cap)")
    parser.add_argument("--max-queued", type=_limit, help="queued prompts beyond which submissions get 429")
    parser.add_argument("--max-running", type=_limit, help="prompts it may run at once")
    parser.add_argument("--max-priority", type=int, help="priorities above this need an operator key (default 50)")
    parser.add_argument("--webhook", type=_webhook, help="post every prompt and batch event of the team here "
                                                          "('none': stop)")


def _webhook(text: str) -> str | None:
    return None if text.lower() in ("none", "-", "") else text


def _limit(text: str) -> int | None:
    if text.lower() in ("none", "unlimited", "-"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, or 'none'")
    return value


def _limits(args) -> dict:
    given = {}
    for name in ("share", "max_priority"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    for name in ("burst", "max_queued", "max_running", "webhook"):
        # argparse gives None both for "not given" and for "none": tell them apart from argv.
        flag = "--" + name.replace("_", "-")
        if any(arg == flag or arg.startswith(flag + "=") for arg in args.argv):
            given[name] = getattr(args, name)
    return given


def run(args, settings) -> int:
    from farm.db import make_database
    from farm.services import teams

    actor = Principal("default", "admin", f"cli:{getpass.getuser()}@{socket.gethostname()}")
    database = make_database(settings.database_url)
    try:
        if args.command == "teams":
            if args.teams_command == "create":
                team = teams.create_team(database, args.name, teams.TeamLimits(**_limits(args)), actor)
                print(f"team {team['name']} created (share {team['share']:g})")
            elif args.teams_command == "secret":
                print(teams.webhook_secret(database, args.name))
            elif args.teams_command == "set":
                team = teams.update_team(database, args.name, _limits(args), actor)
                print(f"team {team['name']}: " + ", ".join(f"{k} {team[k]}" for k in teams.LIMIT_FIELDS))
            else:
                found = teams.list_teams(database)
                print(json.dumps(found, indent=2) if args.json else _table(found, ("name", *teams.LIMIT_FIELDS, "webhook")))
        elif args.keys_command == "create":
            secret, key = teams.create_key(database, args.team, args.role, args.label, actor)
            print(f"key {key['id']} ({key['prefix']}...) for team {key['team']}, role {key['role']}; "
                  "its secret, shown only now:", file=sys.stderr)
            print(secret)
        elif args.keys_command == "ls":
            found = teams.list_keys(database, args.team, include_revoked=args.all)
            columns = ("id", "prefix", "team", "role", "label", "created_at") + (("revoked_at",) if args.all else ())
            print(json.dumps(found, indent=2) if args.json else _table(found, columns))
        else:
            key = teams.revoke_key(database, args.key, actor)
            print(f"key {key['id']} ({key['prefix']}...) of team {key['team']} revoked")
        return 0
    except teams.TeamError as error:
        print(f"farm: {error}", file=sys.stderr)
        return 1
    finally:
        database.dispose()


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    if not rows:
        return "none"
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c.upper()), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)
