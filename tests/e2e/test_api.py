"""`grpod api` as a process, as agents and operators use it: tokens from `grpod token`, libraries with
ETags and long polls, operator actions in the audit log, events over HTTP; and no token in any output."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from grpod.workers.operations import Operation

from ..factories import reward, trace
from ..integration.stored import ingest, publish
from .api_process import Api, api_env, serve_api
from .helpers import run_grpod


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    env = api_env(tmp_path, database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        ingest(conn, trace("t1"), trace("c1", domain="coding"))
        publish(conn, "support", [Operation("ADD", "When asked about keys, check the docs.")])
        publish(conn, "support", [Operation("ADD", "When unsure, ask one question.")])
    with serve_api(env, tmp_path / "api.log") as served:
        yield served


def _spooled(spool: Path) -> int:
    """Events in the embedded spool (a file per published batch, an event per line)."""
    return sum(len(path.read_bytes().splitlines()) for path in spool.rglob("*") if path.is_file())


def test_health_and_the_openapi_document_need_no_token(api: Api) -> None:
    assert api.call("GET", "/healthz")[0] == 200
    assert api.call("GET", "/readyz")[:3:2] == (200, {"ok": True})
    status, _, document = api.call("GET", "/openapi.json")
    assert status == 200 and "/v1/libraries/{domain}" in document["paths"] and "/v1/events" in document["paths"]


def test_no_token_a_wrong_one_or_a_revoked_one_is_401_and_outside_its_reach_is_403(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    reader = api.token("support-agent", "--domain", "support", "--scope", "read")
    assert api.call("GET", "/v1/libraries/support")[0] == 401
    assert api.call("GET", "/v1/libraries/support", "grpod_not-a-token")[0] == 401
    assert api.call("GET", "/v1/libraries/support", reader)[0] == 200
    status, _, body = api.call("GET", "/v1/libraries/coding", reader)
    assert status == 403 and body == {"error": "token 'support-agent' may not read on domain 'coding'"}
    # A read token cannot act, and the refused action changes nothing.
    status, _, _ = api.call("POST", "/v1/libraries/support/rollback", reader, {"to": 1, "reason": "no"})
    assert status == 403
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT version FROM library_labels WHERE label = 'production'").fetchone() == (2,)
    assert api.call("GET", "/v1/status", reader)[0] == 403
    assert run_grpod(["token", "revoke", "support-agent"], api.env).returncode == 0
    assert api.call("GET", "/v1/libraries/support", reader)[0] == 401
    listed = json.loads(run_grpod(["token", "list", "--json"], api.env).stdout)
    assert listed[0]["name"] == "support-agent" and listed[0]["revoked_at"] is not None
    assert "token" not in listed[0] and reader not in json.dumps(listed)
    # No token appears in the API's output.
    api.process.terminate()
    api.process.wait(timeout=30)
    assert reader not in (tmp_path / "api.log").read_text()


def test_a_library_with_its_etag_a_304_and_a_long_poll_that_hears_a_rollback(api: Api) -> None:
    reader = api.token("agent", "--domain", "support", "--scope", "read")
    operator = api.token("oncall", "--all-domains", "--scope", "operate")
    status, headers, body = api.call("GET", "/v1/libraries/support", reader)
    assert status == 200 and body["version"] == 2 and body["label"] == "production"
    assert [e["id"] for e in body["experiences"]] == [1, 2]
    assert body["prompt"].splitlines()[1:] == [
        "[1] When asked about keys, check the docs.",
        "[2] When unsure, ask one question.",
    ]
    etag = headers["etag"]
    assert api.call("GET", "/v1/libraries/support", reader, headers={"If-None-Match": etag})[0] == 304
    assert api.call("GET", "/v1/libraries/support?version=1", reader)[2]["version"] == 1
    assert api.call("GET", "/v1/libraries/support?version=9", reader)[0] == 404
    assert api.call("GET", "/v1/libraries/nowhere", reader)[0] == 403  # not its domain, whether or not it exists

    def roll_back() -> None:
        time.sleep(1.0)
        api.call("POST", "/v1/libraries/support/rollback", operator, {"to": 1, "reason": "v2 lost the key rule"})

    rolling = threading.Thread(target=roll_back)
    started = time.monotonic()
    rolling.start()
    status, headers, body = api.call("GET", "/v1/libraries/support?wait=20", reader, headers={"If-None-Match": etag})
    waited = time.monotonic() - started
    rolling.join()
    assert status == 200 and body["version"] == 1 and headers["etag"] != etag
    assert 0.9 < waited < 10, waited  # it returned when production moved, not at the end of the wait
    log = api.call("GET", "/v1/libraries/support/log", operator)[2]
    assert (log[0]["action"], log[0]["actor"], log[0]["reason"]) == ("rollback", "token:oncall", "v2 lost the key rule")
    assert [row["version"] for row in api.call("GET", "/v1/libraries/support/history", operator)[2]] == [2, 1]
    changes = api.call("GET", "/v1/libraries/support/diff?a=1&b=2", operator)[2]
    assert [e["id"] for e in changes["added"]] == [2]
    status, _, body = api.call("POST", "/v1/libraries/support/promote", operator, {"version": 7, "reason": "x"})
    assert status == 404 and "no library version 7" in body["error"]
    assert api.call("POST", "/v1/libraries/support/freeze", operator, {"reason": "incident"})[0] == 200
    assert api.call("POST", "/v1/libraries/support/unfreeze", operator, {"reason": "over"})[0] == 200


def test_events_over_http_are_validated_published_and_the_rejected_kept(api: Api, database_url: str) -> None:
    publisher = api.token("ingest", "--domain", "support", "--scope", "publish")
    good = [trace("h1"), reward("h1", 1.0)]
    bad = {"type": "trace", "trace_id": "h2"}
    status, _, body = api.call("POST", "/v1/events", publisher, [*good, bad])
    assert status == 200 and body["accepted"] == 2
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(2, "schema_violation")]
    with psycopg.connect(database_url) as conn:
        kept = conn.execute("SELECT reason, origin FROM rejected_events").fetchall()
    assert kept == [("schema_violation", "api:ingest")]
    spool = Path(api.env["GRPOD_HOME"]) / "broker" / "events"
    assert _spooled(spool) == 2  # no broker set: the embedded spool
    # Another domain's event, or a reward for another domain's stored trace: 403, nothing taken.
    assert api.call("POST", "/v1/events", publisher, [trace("h3"), trace("h4", domain="coding")])[0] == 403
    assert api.call("POST", "/v1/events", publisher, [reward("c1", 1.0)])[0] == 403
    assert _spooled(spool) == 2
    assert api.call("POST", "/v1/events", publisher, {"not": "a list"})[0] == 400
    assert api.call("POST", "/v1/events", publisher, b"{not json")[0] == 400
    reader = api.token("reader", "--domain", "support", "--scope", "read")
    assert api.call("POST", "/v1/events", reader, good)[0] == 403
    # A body over the limit is refused on its declared length, before a byte of it is read.
    connection = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/v1/events")
    connection.putheader("Authorization", f"Bearer {publisher}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(50 * 1024 * 1024))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "GRPOD_API_MAX_BODY_BYTES" in json.loads(answer.read())["error"]
    connection.close()


def test_the_sdk_reads_over_http_hears_a_rollback_and_serves_the_last_library_when_the_api_is_away(
    api: Api,
) -> None:
    from grpod.sdk import HttpLibraryCache

    reader = api.token("agent", "--domain", "support", "--scope", "read")
    operator = api.token("oncall", "--domain", "support", "--scope", "operate")
    with HttpLibraryCache(api.url, reader, wait=5, max_staleness=0.5) as cache:
        first = cache.get("support")
        assert first.version == 2 and [e.id for e in first.experiences] == [1, 2]
        assert api.call("POST", "/v1/libraries/support/rollback", operator, {"to": 1, "reason": "bad"})[0] == 200
        deadline = time.monotonic() + 10
        while cache.get("support").version != 1:  # the long poll hears it; no fetch is needed
            assert time.monotonic() < deadline, "the rollback did not reach the SDK within 10 s"
            time.sleep(0.1)
        assert cache.refreshes == 1 and cache.get("support").prompt.splitlines()[1:] == [
            "[1] When asked about keys, check the docs."
        ]
        api.process.terminate()
        api.process.wait(timeout=30)
        time.sleep(1.0)  # past max_staleness, with the long poll failing
        assert cache.get("support").version == 1 and cache.stale_served >= 1


def test_the_sdk_publishes_over_http(api: Api) -> None:
    from grpod.sdk import Client, ClientSettings

    publisher = api.token("sdk", "--domain", "support", "--scope", "publish")
    settings = ClientSettings(home=Path(api.env["GRPOD_HOME"]) / "agent", api_url=api.url, api_token=publisher)
    with Client(settings) as client:
        trace_id = client.record_trace(
            domain="support", query="How do I rotate my key?", trajectory=[{"role": "user", "content": "?"}], answer="!"
        )
        client.record_reward(trace_id, 1.0)
    spool = Path(api.env["GRPOD_HOME"]) / "broker" / "events"  # the API's embedded spool, not the agent's
    assert _spooled(spool) == 2
    assert not (Path(api.env["GRPOD_HOME"]) / "agent").exists()
    refused = ClientSettings(home=Path(api.env["GRPOD_HOME"]) / "agent", api_url=api.url, api_token="grpod_wrong")
    with Client(refused) as client, pytest.raises(Exception, match="refused the events \\(401\\)"):
        client.record_trace(domain="support", query="q", trajectory=[{"role": "user", "content": "?"}], answer="!")


METRICS = [
    "grpod_events_accepted_total",
    "grpod_events_rejected_total",
    "grpod_queue_depth",
    "grpod_distillations_total",
    "grpod_llm_calls_total",
    "grpod_llm_tokens_total",
    "grpod_llm_errors_total",
    "grpod_llm_latency_seconds",
    "grpod_library_versions_total",
    "grpod_rollbacks_total",
    "grpod_library_experiences",
]


def test_metrics_carry_the_whole_deployment_for_an_all_domains_operator(api: Api, database_url: str) -> None:
    operator = api.token("prometheus", "--all-domains", "--scope", "operate")
    support_only = api.token("support-oncall", "--domain", "support", "--scope", "operate")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO llm_calls (domain, purpose, model, prompt_hash, request, response, error, tokens_in, "
            "tokens_out, latency_seconds) VALUES ('support', 'summary', 'scripted', '\\x00', '{}', 'ok', NULL, "
            "120, 30, 0.7), ('support', 'advantage', 'scripted', '\\x01', '{}', 'no', 'no JSON', 200, 10, 3.0)"
        )
    api.call("POST", "/v1/libraries/support/rollback", operator, {"to": 1, "reason": "check the counter"})
    request = urllib.request.Request(api.url + "/metrics", headers={"Authorization": f"Bearer {operator}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    for name in METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    assert samples['grpod_events_accepted_total{domain="support"}'] == 1
    assert samples['grpod_llm_calls_total{model="scripted",purpose="summary"}'] == 1
    assert samples['grpod_llm_tokens_total{direction="in",purpose="advantage"}'] == 200
    assert samples['grpod_llm_errors_total{purpose="advantage"}'] == 1
    assert (
        samples['grpod_llm_latency_seconds_bucket{le="1.0"}'] == 1 and samples["grpod_llm_latency_seconds_count"] == 2
    )
    assert samples['grpod_library_versions_total{domain="support"}'] == 2
    assert samples['grpod_rollbacks_total{domain="support"}'] == 1
    assert samples['grpod_library_experiences{domain="support",label="production"}'] == 1
    assert api.call("GET", "/metrics")[0] == 401
    assert api.call("GET", "/metrics", support_only)[0] == 403  # they cover every domain
