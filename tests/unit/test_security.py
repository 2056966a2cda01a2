"""The origin check, Sec-Fetch-Site, CORS mode and OPTIONS (spec comfyui-api.md §1, §9.1-9.2), and /features."""

from __future__ import annotations

import json
import socket

import pytest
from sqlalchemy import func, select

from farm.db.models import Prompt
from tests.workflows import invert_workflow

LOOPBACK_HOSTS = ["127.0.0.1:8188", "localhost:8188", "[::1]:8188", "127.0.0.2:8188", "[::ffff:127.0.0.1]:8188"]
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Allow-Credentials": "true",
}


def stored_count(context) -> int:
    with context.database.reading() as session:
        return session.scalar(select(func.count()).select_from(Prompt))


def post_prompt(client, path="/prompt", **headers):
    return client.post(path, data=json.dumps({"prompt": invert_workflow()}), headers=headers)


def assert_refused(response):
    assert response.status_code == 403
    assert response.get_data() == b""


@pytest.fixture
def fake_dns(monkeypatch):
    """Names resolved without a network; every lookup is recorded."""
    table = {
        "farm.example.com": ["203.0.113.5"],
        "rebound.example": ["127.0.0.1", "::1"],
        "mixed.example": ["127.0.0.1", "203.0.113.5"],
    }
    lookups = []

    def getaddrinfo(name, port, *args, **kwargs):
        lookups.append(name)
        if name not in table:
            raise socket.gaierror("unknown name")
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))
                for address in table[name]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


# --- attacks the default origin check refuses --------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
@pytest.mark.parametrize("path", ["/object_info", "/api/queue", "/system_stats", "/no/such/path"])
def test_foreign_origin_on_loopback_host_is_403_with_empty_body(client, host, path):
    assert_refused(client.get(path, headers={"Host": host, "Origin": "http://evil.example"}))


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
def test_foreign_origin_cannot_queue_a_prompt(client, context, path):
    assert_refused(post_prompt(client, path, Host="127.0.0.1:8188", Origin="https://evil.example"))
    assert stored_count(context) == 0


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_origin_null_is_refused_on_loopback_hosts(client, context, host):
    # Deliberate hardening: ComfyUI lets `Origin: null` pass (CVE-2026-56674).
    assert_refused(client.get("/queue", headers={"Host": host, "Origin": "null"}))
    assert_refused(post_prompt(client, Host=host, Origin="null"))
    assert stored_count(context) == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("host", ["127.0.0.1:8188", "192.168.1.20:8188", "farm.example.com"])
def test_sec_fetch_site_cross_site_is_refused_on_any_host(client, context, fake_dns, method, host):
    headers = {"Host": host, "Sec-Fetch-Site": "cross-site"}
    response = post_prompt(client, **headers) if method == "POST" else client.get("/prompt", headers=headers)
    assert_refused(response)
    assert stored_count(context) == 0


def test_sec_fetch_site_cross_site_refuses_options_too(client):
    assert_refused(client.options("/prompt", headers={"Sec-Fetch-Site": "cross-site"}))


@pytest.mark.parametrize("value", ["same-origin", "same-site", "none", "Cross-Site"])
def test_other_sec_fetch_site_values_pass(client, context, value):
    # The comparison is exact and case-sensitive, as ComfyUI's.
    assert post_prompt(client, **{"Sec-Fetch-Site": value}).status_code == 200
    assert stored_count(context) == 1


@pytest.mark.parametrize("host, origin", [
    ("127.0.0.1:8188", "http://localhost:8188"),
    ("localhost:8188", "http://127.0.0.1:8188"),
    ("[::1]:8188", "http://127.0.0.1:8188"),
])
def test_loopback_names_are_compared_as_strings(client, host, origin):
    assert_refused(client.get("/queue", headers={"Host": host, "Origin": origin}))


@pytest.mark.parametrize("host, origin, status", [
    ("127.0.0.1:8188", "http://127.0.0.1:3000", 403),  # another local port is another site
    ("127.0.0.1:8188", "http://127.0.0.1", 200),  # Origin without a port: the Host's port is dropped
    ("127.0.0.1", "http://127.0.0.1:8188", 200),  # Host without a port: the Origin's port is dropped
    ("localhost:8188", "https://localhost:8188", 200),  # the scheme is not compared
    ("LOCALHOST:8188", "http://localhost:8188", 200),  # the Host is lowercased
    ("[::1]:8188", "http://[::1]:3000", 403),
])
def test_ports(client, host, origin, status):
    response = client.get("/queue", headers={"Host": host, "Origin": origin})
    assert response.status_code == status


# --- what passes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_matching_origin_passes(client, context, host):
    origin = "http://" + host
    assert client.get("/queue", headers={"Host": host, "Origin": origin}).status_code == 200
    assert post_prompt(client, Host=host, Origin=origin, **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert stored_count(context) == 1


def test_requests_without_origin_pass(client, context):
    # Scripts and API clients send no Origin; the check needs both Host and Origin.
    assert post_prompt(client, Host="127.0.0.1:8188").status_code == 200
    assert stored_count(context) == 1


@pytest.mark.parametrize("host", ["farm.example.com", "farm.example.com:8188", "192.168.1.20:8188",
                                  "[2001:db8::1]:8188", "mixed.example:8188", "unresolvable.invalid:8188"])
def test_non_loopback_host_gets_no_origin_check(client, context, fake_dns, host):
    """ComfyUI's behaviour, kept: a server reached by a LAN address or a public name trusts its network.

    A page on evil.example can therefore reach such a farm through a user's browser unless the
    browser sends `Sec-Fetch-Site: cross-site` (current browsers do, over HTTPS or to a local
    address); a farm exposed beyond loopback needs its own authentication in front.
    """
    response = post_prompt(client, Host=host, Origin="http://evil.example")
    assert response.status_code == 200
    assert stored_count(context) == 1


def test_a_name_resolving_only_to_loopback_is_checked(client, fake_dns):
    assert_refused(client.get("/queue", headers={"Host": "rebound.example:8188", "Origin": "http://evil.example"}))
    matching = {"Host": "rebound.example:8188", "Origin": "http://rebound.example:8188"}
    assert client.get("/queue", headers=matching).status_code == 200


def test_name_lookups_are_cached_and_literals_need_none(client, fake_dns):
    for _ in range(3):
        client.get("/queue", headers={"Host": "farm.example.com", "Origin": "http://evil.example"})
        client.get("/queue", headers={"Host": "rebound.example", "Origin": "http://rebound.example"})
        for host in ("127.0.0.1:8188", "localhost:8188", "[::1]:8188", "192.168.1.20"):
            client.get("/queue", headers={"Host": host, "Origin": "http://" + host})
    assert fake_dns == ["farm.example.com", "rebound.example"]


# --- OPTIONS -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt", "/no/such/path"])
@pytest.mark.parametrize("origin", [None, "http://evil.example"])
def test_options_is_an_empty_200_that_reaches_no_handler(client, path, origin):
    headers = {"Host": "127.0.0.1:8188", **({"Origin": origin} if origin else {})}
    response = client.options(path, headers=headers)
    assert response.status_code == 200
    assert response.get_data() == b""
    # Flask's own OPTIONS handler would list the route's methods; an unknown path would be a 404.
    assert "Allow" not in response.headers
    assert not any(name.startswith("Access-Control-") for name in response.headers.keys())


# --- --enable-cors-header ----------------------------------------------------------------------------------------


def cors_app(tmp_path, database_url, origin="*"):
    from farm.config import load_settings
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=str(tmp_path / "d"), database_url=database_url, enable_cors_header=origin)
    context = make_context(settings)
    return create_app(settings, context=context), context


def test_cors_mode_adds_the_four_headers_to_every_response(tmp_path, database_url):
    app, context = cors_app(tmp_path, database_url)
    client = app.test_client()
    foreign = {"Host": "127.0.0.1:8188", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    responses = {
        "object_info": client.get("/object_info", headers=foreign),
        "prompt": post_prompt(client, **foreign),
        "null origin": post_prompt(client, "/api/prompt", Host="localhost:8188", Origin="null"),
        "bad prompt": client.post("/prompt", data="{", headers=foreign),
        "not found": client.get("/no/such/path", headers=foreign),
        "options": client.options("/prompt", headers=foreign),
    }
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {"object_info": 200, "prompt": 200, "null origin": 200, "bad prompt": 400, "not found": 404,
                        "options": 200}
    for response in responses.values():
        assert {name: response.headers.get(name) for name in CORS_HEADERS} == CORS_HEADERS
    assert responses["options"].get_data() == b""
    assert stored_count(context) == 2
    context.database.dispose()


def test_cors_mode_sends_the_configured_origin(tmp_path, database_url):
    app, context = cors_app(tmp_path, database_url, origin="https://studio.example")
    response = app.test_client().get("/api/features", headers={"Origin": "https://studio.example"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://studio.example"
    context.database.dispose()


def test_default_mode_sends_no_cors_headers(client):
    response = client.get("/features", headers={"Host": "127.0.0.1:8188", "Origin": "http://127.0.0.1:8188"})
    assert response.status_code == 200
    assert not any(name.startswith("Access-Control-") for name in response.headers.keys())


# --- /features, settings and the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_features_advertises_previews_and_the_upload_limit(client, prefix):
    assert client.get(f"{prefix}/features").get_json() == {"supports_preview_metadata": True,
                                                           "max_upload_size": 100 * 1024 * 1024}


def test_features_follows_the_configured_limit(tmp_path, database_url):
    from farm.config import load_settings
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=str(tmp_path / "d"), database_url=database_url, max_upload_bytes=1000)
    context = make_context(settings)
    body = create_app(settings, context=context).test_client().get("/features").get_json()
    assert body == {"supports_preview_metadata": True, "max_upload_size": 1000}
    context.database.dispose()


@pytest.mark.parametrize("command", ["web", "up"])
@pytest.mark.parametrize("argv, expected", [
    ([], None),
    (["--enable-cors-header"], "*"),
    (["--enable-cors-header", "https://studio.example"], "https://studio.example"),
    (["--enable-cors-header", "--port", "9000"], "*"),
])
def test_parser_accepts_enable_cors_header_with_and_without_origin(command, argv, expected):
    from farm.cli import build_parser

    assert build_parser().parse_args([command, *argv]).enable_cors_header == expected


def test_worker_has_no_cors_flag():
    from farm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--cpu", "--enable-cors-header"])


def test_cors_setting_comes_from_the_environment_and_reaches_child_processes():
    from farm.config import load_settings, settings_environment

    assert load_settings(env={}).enable_cors_header is None
    from_env = load_settings(env={"FARM_ENABLE_CORS_HEADER": "*"})
    assert from_env.enable_cors_header == "*"
    flag_wins = load_settings(env={"FARM_ENABLE_CORS_HEADER": "*"}, enable_cors_header="https://a.example")
    assert flag_wins.enable_cors_header == "https://a.example"
    child = settings_environment(from_env)
    assert child["FARM_ENABLE_CORS_HEADER"] == "*"
    assert load_settings(env=child).enable_cors_header == "*"
    assert "FARM_ENABLE_CORS_HEADER" not in settings_environment(load_settings(env={}))
