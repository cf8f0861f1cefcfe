"""The operator dashboard at `/ui`, driven in Debian's headless Chromium with Playwright: sign in with
an operate token, read the overview, the library timeline, a diff, provenance, groups and
distillations, roll production back with a reason, replay a rejected event. The database is checked
after each change. Screenshots go to the test's folder, and to $DASHBOARD_SCREENSHOTS when it is set
(the README's come from there)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from grpod.schema.events import Rejection, RejectReason
from grpod.workers.ingest import Incoming, insert_rejections
from grpod.workers.operations import Operation

from ..factories import raw, reward, trace
from ..integration.stored import ingest, publish
from .api_process import Api, api_env, serve_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _publish(conn: psycopg.Connection[Any], domain: str, texts: list[str], traces: list[str]) -> int:
    """A version whose new experiences name a distillation, a group and the traces behind them."""
    return publish(
        conn,
        domain,
        [Operation("ADD", text, sources=(1,)) for text in texts],
        f"update window of 1 distillation(s): 1 ({len(texts)} added)",
        provenance=lambda op: {"distillations": [1], "groups": [1], "traces": traces},
    )


def _plant(database_url: str) -> None:
    """Two versions of support with rewarded traces on each, a ready group with its distillation and
    LLM calls, a version of coding, and a rejected event worth replaying."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        served = [trace(f"s{i}", library_version=1 + i % 2, query=f"How do I rotate key {i}?") for i in range(12)]
        ingest(conn, *served, *[reward(f"s{i}", 0.9 - 0.1 * (i % 3) - 0.3 * (i % 2)) for i in range(12)])
        ingest(conn, trace("c1", domain="coding"))
        _publish(conn, "support", ["When asked about keys, check the docs first."], ["s0", "s2"])
        _publish(conn, "support", ["Answer in one short paragraph."], ["s1", "s3"])
        _publish(conn, "coding", ["Run the tests before answering."], ["c1"])
        group = conn.execute(
            "INSERT INTO groups (domain, dimension, centroid, size, ready_at) "
            "VALUES ('support', 3, '[1,0,0]', 4, now()) RETURNING id"
        ).fetchone()
        assert group is not None
        conn.execute("UPDATE traces SET group_id = %s WHERE trace_id IN ('s0', 's1', 's2', 's3')", (group[0],))
        samples = [{"trace_id": f"s{i}", "reward": 0.9 - 0.3 * (i % 2), "critique": None} for i in range(4)]
        distillation = conn.execute(
            "INSERT INTO distillations (domain, group_id, input_key, parent_version, samples, settings, status, "
            "operations, notes) VALUES ('support', %s, 'k', 0, %s, '{}', 'applied', %s, %s) RETURNING id",
            (
                group[0],
                json.dumps(samples),
                json.dumps([{"kind": "ADD", "text": "When asked about keys, check the docs first."}]),
                json.dumps([{"proposed": "ADD Be nice", "action": "dropped", "why": "too vague to act on"}]),
            ),
        ).fetchone()
        assert distillation is not None
        for purpose, tokens in (("summary", 310), ("advantage", 540), ("operations", 220)):
            conn.execute(
                "INSERT INTO llm_calls (domain, distillation_id, purpose, model, prompt_hash, request, response, "
                "tokens_in, tokens_out, latency_seconds) VALUES ('support', %s, %s, 'scripted', 'h', '{}', 'ok', "
                "%s, 40, 0.8)",
                (distillation[0], purpose, tokens),
            )
        # An event whose storing failed for a passing reason: replaying it stores it.
        with conn.transaction(), conn.cursor() as cursor:
            event = trace("late", query="Why was my card declined?")
            insert_rejections(
                cursor,
                [
                    (
                        Incoming(raw(event), "amqp"),
                        Rejection(
                            RejectReason.PROCESSING_ERROR, "storing it failed: the disk was full", "late", "support"
                        ),
                    )
                ],
                65536,
            )


@pytest.fixture
def dashboard(tmp_path: Path, database_url: str) -> Iterator[Api]:
    env = api_env(tmp_path, database_url)
    _plant(database_url)
    with serve_api(env, tmp_path / "api.log") as served:
        yield served


def _shoot(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    wanted = os.environ.get("DASHBOARD_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(wanted) / f"{name}.png"), full_page=True)


def _production(database_url: str, domain: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT version FROM library_labels WHERE domain = %s AND label = 'production'", (domain,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_an_operator_signs_in_reads_the_library_and_rolls_production_back(
    dashboard: Api, database_url: str, tmp_path: Path
) -> None:
    operator = dashboard.token("oncall", "--domain", "support", "--scope", "operate")
    reader = dashboard.token("agent", "--domain", "support", "--scope", "read")
    assert _production(database_url, "support") == 2
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(dashboard.url + "/ui/domains/support")
        assert page.url.startswith(dashboard.url + "/ui/login?next=%2Fui%2Fdomains%2Fsupport")
        expect(page.get_by_role("alert")).to_contain_text("sign in with an operate token")
        # A token without operate cannot sign in.
        page.fill("#token", reader)
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_have_text("token 'agent' has no operate scope")
        page.fill("#token", operator)
        page.click("button[type=submit]")
        # Back where it was going, the library of support.
        expect(page).to_have_url(dashboard.url + "/ui/domains/support")
        expect(page.locator("#production-version")).to_have_text("2")
        assert page.locator("#timeline circle").count() == 2  # both versions have rewarded traces
        assert page.locator("#timeline polygon").count() == 1  # one confidence band across them
        expect(page.locator("#versions tr[data-version='2']")).to_contain_text("production")
        _shoot(page, tmp_path, "library")

        page.goto(dashboard.url + "/ui")
        rows = page.locator("#domains tbody tr")
        expect(rows).to_have_count(1)  # coding is not this token's
        expect(rows.first).to_have_attribute("data-domain", "support")
        cells = rows.first.locator("td")
        expect(cells.nth(2)).to_have_text("0")  # every trace of support has its reward
        expect(cells.nth(3)).to_have_text("1")  # the rejected event named support
        expect(cells.nth(4)).to_have_text("1")  # the ready group
        expect(cells.nth(5)).to_have_text("2")
        _shoot(page, tmp_path, "overview")

        # The rollback, with its reason.
        page.click("#domains a[href='/ui/domains/support']")
        page.select_option("#rollback-version", "1")
        page.fill("#rollback-reason", "v2 made the answers longer")
        page.click("#rollback-form button")
        expect(page.get_by_role("status")).to_have_text("production of support moved from version 2 to 1 (rollback)")
        expect(page.locator("#production-version")).to_have_text("1")
        expect(page.locator("#audit tbody tr").first).to_contain_text("token:oncall")
        assert _production(database_url, "support") == 1
        with psycopg.connect(database_url) as conn:
            logged = conn.execute(
                "SELECT action, to_version, actor, reason FROM library_events WHERE domain = 'support' "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        assert logged == ("rollback", 1, "token:oncall", "v2 made the answers longer")
        # An action without its reason is not sent: the browser asks for it.
        page.fill("#freeze-reason", "")
        page.click("#freeze-form button")
        expect(page.locator("#freeze-form")).to_be_visible()
        with psycopg.connect(database_url) as conn:
            frozen = conn.execute("SELECT frozen_at FROM domains WHERE name = 'support'").fetchone()
        assert frozen == (None,)

        # The diff, then provenance back to the traces and the distillation.
        page.select_option("#diff-form select[name=a]", "1")
        page.select_option("#diff-form select[name=b]", "2")
        page.click("#diff-form button")
        expect(page.locator("#diff tr.added")).to_have_count(1)
        expect(page.locator("#diff tr.added")).to_contain_text("Answer in one short paragraph.")
        page.goto(dashboard.url + "/ui/domains/support/versions/2")
        first = page.locator("#experiences tr[data-experience='1']")
        expect(first).to_contain_text("When asked about keys, check the docs first.")
        expect(first.locator("a[href='/ui/traces/s0']")).to_have_count(1)
        _shoot(page, tmp_path, "provenance")
        first.locator("a[href='/ui/traces/s0']").click()
        expect(page.locator("h1")).to_have_text("Trace s0")
        expect(page.locator("main")).to_contain_text("How do I rotate key 0?")

        page.goto(dashboard.url + "/ui/domains/support/groups")
        expect(page.locator("#groups tbody tr")).to_have_count(1)
        expect(page.locator("#groups tbody tr").first).to_contain_text("ready")
        distilled = page.locator("#distillations tbody tr").first
        expect(distilled).to_contain_text("applied")
        expect(distilled.locator("td").nth(6)).to_have_text("3")  # its three LLM calls
        expect(distilled.locator("td").nth(7)).to_have_text("1070 / 120")
        expect(distilled).to_contain_text("too vague to act on")
        _shoot(page, tmp_path, "groups")
        distilled.locator("a").first.click()
        expect(page.locator("#calls tbody tr")).to_have_count(3)
        expect(page.locator("#samples a[href='/ui/traces/s1']")).to_have_count(1)

        # The rejected event, replayed: now it is stored.
        page.goto(dashboard.url + "/ui/rejected")
        row = page.locator("#rejected tbody tr").first
        expect(row).to_contain_text("processing_error")
        expect(row).to_contain_text("support")
        _shoot(page, tmp_path, "rejected")
        row.locator("button").click()
        expect(page.get_by_role("status")).to_contain_text("replayed: accepted")
        expect(page.locator("#rejected tbody tr").first).to_contain_text("accepted")
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT domain FROM traces WHERE trace_id = 'late'").fetchone() == ("support",)

        # Another domain's pages are refused, and signing out ends the session.
        page.goto(dashboard.url + "/ui/domains/coding")
        expect(page.get_by_role("alert")).to_have_text("token 'oncall' may not operate on domain 'coding'")
        page.goto(dashboard.url + "/ui")
        page.click("header form button")
        expect(page).to_have_url(dashboard.url + "/ui/login")
        page.goto(dashboard.url + "/ui")
        expect(page.locator("#token")).to_be_visible()
        browser.close()
    assert _production(database_url, "coding") == 1
    dashboard.process.terminate()
    dashboard.process.wait(timeout=30)
    output = (tmp_path / "api.log").read_text()
    assert operator not in output and reader not in output


def _fetch(
    url: str, token: str | None, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    """One request without following redirects: its status, body and headers."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_the_dashboard_serves_a_bearer_token_and_refuses_a_form_from_another_site(
    dashboard: Api, database_url: str
) -> None:
    operator = dashboard.token("oncall", "--all-domains", "--scope", "operate")
    status, body, _ = _fetch(dashboard.url + "/ui", operator)
    assert status == 200 and 'data-domain="coding"' in body and 'data-domain="support"' in body
    assert "0 rejected event(s) named no domain" in body  # the one rejected event named support
    # No token: a browser is sent to sign in; a wrong bearer token is 401.
    status, _, headers = _fetch(dashboard.url + "/ui/rejected", None)
    assert status == 303 and headers["location"].startswith("/ui/login?next=%2Fui%2Frejected")
    assert _fetch(dashboard.url + "/ui", "grpod_not-a-token")[0] == 401
    # A form posted from another site changes nothing.
    form = b"version=1&reason=from+elsewhere"
    kinds = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body, _ = _fetch(
        dashboard.url + "/ui/domains/support/rollback", operator, form, kinds | {"Origin": "https://evil.example"}
    )
    assert status == 403 and "another site" in body
    assert _production(database_url, "support") == 2
    # The same form from the dashboard's own origin acts; a refused action says why.
    status, _, headers = _fetch(
        dashboard.url + "/ui/domains/support/rollback", operator, form, kinds | {"Origin": dashboard.url}
    )
    assert status == 303 and "notice=" in headers["location"]
    assert _production(database_url, "support") == 1
    status, _, headers = _fetch(dashboard.url + "/ui/domains/support/promote", operator, b"version=9&reason=x", kinds)
    assert status == 303 and "no+library+version+9" in headers["location"]
    status, body, _ = _fetch(dashboard.url + "/ui/domains/support/versions/9", operator)
    assert status == 404 and "no library version 9" in body
    # Text from events is shown, never run: a query with markup stays text.
    with psycopg.connect(database_url, autocommit=True) as conn:
        ingest(conn, trace("x1", query="<script>alert(1)</script>"))
    status, body, _ = _fetch(dashboard.url + "/ui/traces/x1", operator)
    assert status == 200 and "<script>alert(1)</script>" not in body and "&lt;script&gt;" in body
