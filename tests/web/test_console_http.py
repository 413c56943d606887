"""The console over HTTP, as a reverse proxy and a Prometheus scraper see it: a root path in
every link and cookie, the proxy's forwarded scheme and client address trusted, pages only
for a signed-in operator when so configured, ``/metrics`` behind the same credentials, and
the signal endpoint on the same server, open to callbacks (their waitpoint token is their
credential)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import command_calls

from ff_celery.engine.core.connection import connect
from web.conftest import TOKEN, Console, serving

USER, PASSWORD = "ops", "correct horse"


@pytest.fixture(scope="module")
def proxied(ff_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """``ff-celery serve`` as run behind a proxy that serves it under /ff (and strips /ff)."""
    options = ("--console", "--signals", "--metrics", "--root-path", "/ff", "--login-to-read", "--metrics-login",
               "--metrics-interval", "3600")  # fmt: skip
    secrets = {"FF_CONSOLE_USER": USER, "FF_CONSOLE_PASSWORD": PASSWORD}
    with serving(ff_server.url, tmp_path_factory.mktemp("proxied"), *options, secrets=secrets) as running:
        yield running


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


def test_behind_a_proxy_links_and_cookies_carry_the_root_path_and_the_forwarded_scheme(proxied):
    with httpx.Client(base_url=proxied.base_url, headers=FORWARDED) as client:
        page = client.get("/executions")
        assert page.status_code == 303 and page.headers["location"] == "/ff/login?next=%2Fexecutions"
        login = client.post("/login", data={"user": USER, "password": PASSWORD, "next": "/executions"})
        assert login.status_code == 303 and login.headers["location"] == "/ff/executions"
        cookie = login.headers["set-cookie"]
        assert "Path=/ff" in cookie and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        # the cookie is Secure (https at the proxy): pass it on by hand over this plain-HTTP hop
        name, value = cookie.split(";")[0].split("=", 1)
        client.cookies.set(name, value)
        page = client.get("/executions")
        assert page.status_code == 200
        assert 'href="/ff/static/console.css"' in page.text and 'action="/ff/executions"' in page.text
        assert f"operator: {USER}" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
    entries = [json.loads(line) for line in proxied.audit().splitlines()]
    assert {"who": USER, "action": "sign in", "address": "203.0.113.7"}.items() <= entries[-1].items()


@pytest.mark.parametrize("elsewhere", ["//evil.example/x", "/\\evil.example", "https://evil.example/"])
def test_signing_in_never_sends_the_browser_to_another_site(proxied, elsewhere):
    with httpx.Client(base_url=proxied.base_url) as client:
        login = client.post("/login", data={"token": TOKEN, "next": elsewhere})
    assert login.status_code == 303 and login.headers["location"] == "/ff/"


def test_a_wrong_password_is_refused_and_audited(proxied):
    with httpx.Client(base_url=proxied.base_url) as client:
        refused = client.post("/login", data={"user": USER, "password": "wrong"})
    assert refused.status_code == 403 and "Wrong credentials" in refused.text and "set-cookie" not in refused.headers
    last = json.loads(proxied.audit().splitlines()[-1])
    assert (last["who"], last["action"], last["outcome"]) == (USER, "sign in", "refused")


def test_metrics_answer_only_the_operators_credentials_and_a_scrape_costs_the_server_no_command(proxied, ff_server):
    with httpx.Client(base_url=proxied.base_url) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200 and re.search(r"^ff_lane_state_age_seconds \d", scraped.text, re.M)
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert client.get("/metrics", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        store = connect(ff_server.url)
        counted = command_calls(store, "zcard")  # what reading the lanes' state costs, per lane index
        for _ in range(5):
            assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert command_calls(store, "zcard") == counted  # served from the background reading


def test_the_signal_endpoint_answers_callbacks_on_the_same_server(ffapp, proxied):
    waiting = ffapp.await_approval.delay()  # no worker in this module: it stays queued
    execution_id = ffapp.app.backend.engine.resolve(waiting.id)
    with httpx.Client(base_url=proxied.base_url) as client:
        token = {"X-Waitpoint-Token": "k1:0"}
        answer = client.post(f"/v1/signals/{execution_id}/no-such-waitpoint/approve", headers=token)
        assert (answer.status_code, answer.json()["error"]) == (403, "invalid_token")
        unreadable = client.post("/v1/signals/x/y/z", headers={"Transfer-Encoding": "chunked"}, content=b"")
        assert (unreadable.status_code, unreadable.json()["error"]) == (400, "bad_request")
    ffapp.app.control.revoke(waiting.id)
