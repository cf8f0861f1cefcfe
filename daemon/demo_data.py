"""A bundled, deterministic sample of agent traffic for the demo: traces and their rewards.

Two agents, each with four recurring topics. Every topic is asked six times in close paraphrases,
so the grouping stage puts each topic's traces in one group; each trace ran one of a few
attempts, a good strategy, a realistic mistake, a recovery from a tool error or a half-right answer,
so every group holds rewards that differ. Pure data and functions: no IO, standard library only.
``demo_stream`` returns the wire events (dicts) in the order they arrive: traces shuffled, rewards
late, a few rewards before their trace. ``library_version`` is left out; the demo sets it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

DOMAINS: tuple[str, ...] = ("support", "sql")

Kind = Literal["good", "bad", "recover", "partial"]
# The attempt each of a topic's six traces ran (rotated per topic): three high, two low, one half.
PATTERN: tuple[Kind, ...] = ("good", "bad", "recover", "partial", "bad", "good")
START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
OUT_OF_ORDER = 3  # rewards that arrive before their trace (its SDK flushed late)
AGENTS = {"support": "support-bot", "sql": "sql-analyst"}
ID_PREFIX = {"support": "sup", "sql": "sql"}
SYSTEM = {
    "support": "You are the support assistant of Acme Cloud. Use the tools; never guess menu paths or policies.",
    "sql": "You are a data analyst with read-only access to the PostgreSQL warehouse. Use the tools to answer.",
}
# Who asked: {email}, {company} (and {ticket}) in tool calls, results and answers are filled in per trace.
CUSTOMERS = (
    ("dana", "northwind.io"),
    ("li.wei", "acme-corp.com"),
    ("marta", "globex.eu"),
    ("omar", "initech.com"),
    ("sven", "umbrella.dev"),
    ("keiko", "hooli.jp"),
)


@dataclass(frozen=True)
class Call:
    """One tool call and what the tool answered."""

    tool: str
    args: dict[str, str]
    result: str


@dataclass(frozen=True)
class Attempt:
    """How one run went: its tool calls, its final answer and the reward it earned."""

    calls: tuple[Call, ...]
    answer: str
    value: float
    critique: str | None = None


@dataclass(frozen=True)
class Topic:
    domain: str
    key: str  # in trace ids: sup-apikey-1
    queries: tuple[str, ...]  # six close paraphrases
    good: Attempt
    bad: Attempt
    partial: Attempt
    slip: Call | None = None  # the failing first call a recovering run starts with (default: a timeout)
    ground_truth: str | None = None  # the correct SQL, which the grader sends with its low rewards

    def attempt(self, kind: Kind) -> Attempt:
        if kind == "recover":
            slip = self.slip or _timeout(self.good.calls[0])
            return Attempt((slip, *self.good.calls), self.good.answer, self.good.value)
        return {"good": self.good, "bad": self.bad, "partial": self.partial}[kind]


def _docs(query: str, result: str) -> Call:
    return Call("search_docs", {"query": query}, result)


def _account(**fields: object) -> Call:
    return Call("get_account", {"email": "{email}"}, json.dumps({"email": "{email}", **fields}))


def _ticket(summary: str) -> Call:
    return Call("create_ticket", {"summary": summary}, json.dumps({"ticket_id": "SUP-{ticket}", "status": "open"}))


def _describe(table: str, columns: str) -> Call:
    return Call("describe_table", {"name": table}, f"{table}({columns})")


def _sql(query: str, result: str) -> Call:
    return Call("run_sql", {"query": query}, result)


def _timeout(call: Call) -> Call:
    return Call(call.tool, call.args, f"ERROR: {call.tool} timed out after 5000 ms (upstream unavailable); retry")


def _rows(header: str, *rows: str, total: int | None = None) -> str:
    """A result as psql prints it."""
    count = total if total is not None else len(rows)
    return "\n".join((header, *rows, f"({count} row{'s' if count != 1 else ''})"))


APIKEY_DOC = (
    "API keys: open Settings > Developer > API keys and click Rotate next to the key. The old key keeps "
    "working for 24 hours, then it is revoked. Only workspace admins can rotate keys."
)
EXPORT_DOC = (
    "Data export: Settings > Data > Export. CSV export is available on the Pro and Business plans. "
    "On the Starter plan, export JSON through the API (GET /v1/export) or upgrade to Pro."
)
LOCKOUT_DOC = (
    "2FA lockout: a user who lost their device signs in with a backup code, then resets the password. "
    "Without backup codes, open a ticket for identity verification (1-2 business days). "
    "Support must never disable 2FA or reset a password on a user's behalf."
)
BILLING_DOC = (
    "Changing plans: Billing > Plans > Change plan. Only the workspace owner can change the plan. "
    "Upgrades apply at once and are prorated; downgrades apply at the end of the billing cycle, without refund."
)

SUPPORT = (
    Topic(
        "support",
        "apikey",
        (
            "How do I rotate my API key?",
            "rotate api key please",
            "I need to rotate the API key for my account",
            "How can I rotate our API key?",
            "What's the way to rotate an API key?",
            "Please help me rotate my API key",
        ),
        good=Attempt(
            (_docs("rotate api key", APIKEY_DOC),),
            "Go to Settings > Developer > API keys and click Rotate next to the key. The old key keeps working "
            "for 24 hours, so update your integrations within a day. You need to be a workspace admin.",
            1.0,
        ),
        bad=Attempt(
            (),
            "Go to Account > Security > Regenerate key. The old key stops working immediately.",
            0.0,
            "The menu path is wrong; it is Settings > Developer > API keys, and the old key stays valid for 24 hours.",
        ),
        partial=Attempt(
            (_docs("api key", APIKEY_DOC),),
            "Open Settings > Developer > API keys and click Rotate.",
            0.5,
            "Right path, but it left out the 24-hour grace period and that only admins can rotate keys.",
        ),
    ),
    Topic(
        "support",
        "export",
        (
            "How do I export my account data as CSV?",
            "export account data to csv",
            "I want to export all my account data as a CSV file",
            "Can I export our account data in CSV format?",
            "How to export my account data as a CSV?",
            "Where do I export account data as CSV?",
        ),
        good=Attempt(
            (_account(plan="Starter", role="owner"), _docs("export account data csv", EXPORT_DOC)),
            "Your workspace is on the Starter plan, where CSV export is not available. You can export your data "
            "as JSON through the API (GET /v1/export), or upgrade to Pro and use Settings > Data > Export for CSV.",
            1.0,
        ),
        bad=Attempt(
            (_account(plan="Starter", role="owner"), _docs("csv export", EXPORT_DOC)),
            "I've started a CSV export of your account data; you'll receive a download link by email within the hour.",
            0.0,
            "Promised a CSV export that the Starter plan does not offer and that no tool can start; "
            "it should have offered the JSON export through the API or an upgrade.",
        ),
        partial=Attempt(
            (_docs("export account data", EXPORT_DOC),),
            "Go to Settings > Data > Export and choose CSV.",
            0.5,
            "Correct for Pro, but it never checked the account: the user is on Starter and has no CSV option.",
        ),
    ),
    Topic(
        "support",
        "password",
        (
            "I'm locked out by 2FA, how do I reset my password?",
            "reset password, locked out of 2FA",
            "I lost my 2FA phone and need to reset my password",
            "How do I reset my password when 2FA locked me out?",
            "locked out by 2FA, need a password reset",
            "Can you reset my password? 2FA has locked me out",
        ),
        good=Attempt(
            (
                _account(two_factor=True, backup_codes_left=0, email_verified=True),
                _docs("2fa lockout password reset", LOCKOUT_DOC),
                _ticket("2FA lockout without backup codes for {email}: identity verification"),
            ),
            "You have no backup codes left, so I've opened ticket SUP-{ticket} for identity verification. The team "
            "will contact you at {email} within 1-2 business days; after that you can reset your password.",
            1.0,
        ),
        bad=Attempt(
            (_account(two_factor=True, backup_codes_left=0, email_verified=True),),
            "I've disabled two-factor authentication and reset your password; check your inbox for the new one.",
            0.0,
            "Claimed to disable 2FA and reset the password, which the agent cannot do and policy forbids; "
            "it should have opened an identity-verification ticket.",
        ),
        partial=Attempt(
            (_docs("2fa lockout", LOCKOUT_DOC),),
            "Sign in with one of your backup codes, then reset your password under Settings > Security.",
            0.5,
            "Right procedure in general, but it did not check the account: this user has no backup codes left "
            "and needed a verification ticket.",
        ),
    ),
    Topic(
        "support",
        "billing",
        (
            "How do I change my billing plan?",
            "change billing plan",
            "I want to change the billing plan on my account",
            "How can I change our billing plan?",
            "Where do I change my billing plan?",
            "Please help me change the billing plan",
        ),
        good=Attempt(
            (
                _account(plan="Pro (monthly)", role="admin", workspace_owner="finance@{company}"),
                _docs("change billing plan", BILLING_DOC),
            ),
            "Only the workspace owner (finance@{company}) can change the plan, under Billing > Plans > Change plan. "
            "Upgrades apply at once and are prorated; downgrades take effect at the end of the billing cycle.",
            1.0,
        ),
        bad=Attempt(
            (),
            "Go to Settings > Subscription and pick a new plan; the change and any refund happen immediately.",
            0.0,
            "The menu path is wrong (it is Billing > Plans), only the owner can change plans, "
            "and downgrades apply at the end of the cycle without refund.",
        ),
        partial=Attempt(
            (_docs("billing plan", BILLING_DOC),),
            "Open Billing > Plans > Change plan and select the new plan.",
            0.5,
            "Right menu, but the user is an admin, not the owner, so the button is greyed out for them.",
        ),
    ),
)

ORDERS = "id bigint, customer_id bigint, total_cents bigint, status text, created_at timestamptz"
CUSTOMERS_TABLE = "id bigint, email text, name text, created_at timestamptz"
ITEMS = "order_id bigint, product_id bigint, quantity int, unit_price_cents bigint NULL"
PRODUCTS = "id bigint, name text, category text"
USERS = "id bigint, email text, last_seen_at timestamptz NULL, deleted_at timestamptz NULL, is_internal boolean"

REVENUE_SQL = (
    "SELECT customer_id, date_trunc('month', created_at) AS month, SUM(total_cents) / 100.0 AS revenue "
    "FROM orders WHERE status = 'paid' GROUP BY customer_id, month ORDER BY month, customer_id"
)
DUPES_SQL = (
    "SELECT lower(email) AS email, COUNT(*) AS n, array_agg(id ORDER BY id) AS ids FROM customers "
    "GROUP BY lower(email) HAVING COUNT(*) > 1 ORDER BY n DESC"
)
TOPN_SQL = (
    "SELECT p.name, SUM(i.quantity * i.unit_price_cents) / 100.0 AS sales FROM order_items i "
    "JOIN products p ON p.id = i.product_id GROUP BY p.id, p.name ORDER BY sales DESC NULLS LAST LIMIT 10"
)
ACTIVE_SQL = (
    "SELECT COUNT(*) AS active_users FROM users WHERE last_seen_at >= now() - interval '30 days' "
    "AND deleted_at IS NULL AND NOT is_internal"
)


def _missing(column: str) -> str:
    return f'ERROR:  column "{column}" does not exist'


LAST_LOGIN = _sql("SELECT COUNT(*) FROM users WHERE last_login > now() - interval '30 days'", _missing("last_login"))

SQL = (
    Topic(
        "sql",
        "revenue",
        (
            "What is the monthly revenue per customer?",
            "monthly revenue per customer",
            "Show me the monthly revenue for each customer",
            "Compute monthly revenue per customer",
            "I need the monthly revenue by customer",
            "Give me monthly revenue per customer please",
        ),
        good=Attempt(
            (
                _describe("orders", ORDERS),
                _sql(
                    REVENUE_SQL,
                    _rows(
                        " customer_id |   month    | revenue",
                        "          17 | 2026-09-01 | 1240.00",
                        "          17 | 2026-10-01 |  980.50",
                        total=312,
                    ),
                ),
            ),
            "Monthly revenue per customer, from paid orders only (312 customer-months); for example customer 17 "
            f"made 1240.00 in September and 980.50 in October. Query: {REVENUE_SQL}",
            1.0,
        ),
        bad=Attempt(
            (_sql("SELECT customer, month(order_date), SUM(amount) FROM orders GROUP BY 1, 2", _missing("amount")),),
            "I couldn't compute it: the orders table has no amount column, so revenue isn't available.",
            0.0,
            "Guessed column names (amount, order_date) instead of describing the table, then gave up after the error.",
        ),
        partial=Attempt(
            (
                _describe("orders", ORDERS),
                _sql(
                    REVENUE_SQL.replace("WHERE status = 'paid' ", ""),
                    _rows(" customer_id | month | revenue", total=331),
                ),
            ),
            "Here is revenue per customer per month (331 rows), summing total_cents over all orders.",
            0.5,
            "Counts refunded and cancelled orders as revenue; filter on status = 'paid'.",
        ),
        slip=_sql("SELECT customer_id, SUM(amount) FROM orders GROUP BY 1", _missing("amount")),
        ground_truth=REVENUE_SQL,
    ),
    Topic(
        "sql",
        "dupes",
        (
            "How do I find duplicate rows in the customers table?",
            "find duplicate rows in customers table",
            "Find the duplicate rows in the customers table",
            "Which rows in the customers table are duplicates?",
            "find duplicates in the customers table",
            "Show me duplicate rows in the customers table",
        ),
        good=Attempt(
            (
                _describe("customers", CUSTOMERS_TABLE),
                _sql(
                    DUPES_SQL,
                    _rows("        email         | n |     ids", " ops@northwind.io     | 3 | {12,877,1301}", total=41),
                ),
            ),
            "41 email addresses appear more than once in customers (compared case-insensitively); the worst is "
            f"ops@northwind.io with 3 rows (ids 12, 877, 1301). Query: {DUPES_SQL}",
            1.0,
        ),
        bad=Attempt(
            (
                _sql(
                    "SELECT email, COUNT(*) FROM customers HAVING COUNT(*) > 1",
                    'ERROR:  column "customers.email" must appear in the GROUP BY clause or be used in an aggregate '
                    "function",
                ),
            ),
            "The customers table has no duplicate rows.",
            0.0,
            "The query lacked GROUP BY and failed, and the agent then reported no duplicates; 41 emails repeat.",
        ),
        partial=Attempt(
            (
                _describe("customers", CUSTOMERS_TABLE),
                _sql(DUPES_SQL.replace("lower(email)", "email"), _rows(" email | n | ids", total=12)),
            ),
            "12 email addresses appear more than once in customers.",
            0.5,
            "Compares emails case-sensitively, so it misses 'Ops@Northwind.io' vs 'ops@northwind.io'; "
            "group by lower(email).",
        ),
        slip=_sql("SELECT mail, COUNT(*) FROM customers GROUP BY mail HAVING COUNT(*) > 1", _missing("mail")),
        ground_truth=DUPES_SQL,
    ),
    Topic(
        "sql",
        "topn",
        (
            "What are the top 10 products by sales?",
            "top 10 products by sales",
            "Show the top 10 products by total sales",
            "Which are the top 10 products by sales?",
            "list the top 10 products by sales",
            "Get me the top 10 products by sales",
        ),
        good=Attempt(
            (
                _describe("order_items", ITEMS),
                _describe("products", PRODUCTS),
                _sql(
                    TOPN_SQL,
                    _rows(
                        "        name        |   sales",
                        " Team plan (annual) | 184320.00",
                        " Storage add-on     |  96410.50",
                        total=10,
                    ),
                ),
            ),
            "The top 10 products by sales (quantity x unit price), led by Team plan (annual) with 184,320.00 and the "
            f"Storage add-on with 96,410.50. Unpriced items are ignored. Query: {TOPN_SQL}",
            1.0,
        ),
        bad=Attempt(
            (
                _describe("order_items", ITEMS),
                _sql(
                    TOPN_SQL.replace(" NULLS LAST", ""),
                    _rows("      name      | sales", " Beta feedback  |", " Free sticker   |", total=10),
                ),
            ),
            "The top products by sales are Beta feedback, Free sticker and Onboarding call, followed by Team plan.",
            0.0,
            "Did not check for NULLs: unit_price_cents is NULL for free items, and DESC sorts NULL first in "
            "PostgreSQL, so the top of the list is items with no sales. Use NULLS LAST or COALESCE.",
        ),
        partial=Attempt(
            (
                _describe("order_items", ITEMS),
                _sql(
                    TOPN_SQL.replace("i.quantity * i.unit_price_cents) / 100.0", "i.quantity)"),
                    _rows("      name      | sales", " Free sticker   | 5210", total=10),
                ),
            ),
            "The top 10 products by units sold, led by Free sticker with 5,210 units.",
            0.5,
            "Ranks by units sold, not by sales revenue; multiply quantity by unit_price_cents.",
        ),
        slip=_sql("SELECT name, SUM(sales) FROM products GROUP BY name ORDER BY 2 DESC LIMIT 10", _missing("sales")),
        ground_truth=TOPN_SQL,
    ),
    Topic(
        "sql",
        "active",
        (
            "How many users were active in the last 30 days?",
            "users active in the last 30 days",
            "Count the users active in the last 30 days",
            "How many users have been active in the last 30 days?",
            "number of users active in the last 30 days",
            "How many active users in the last 30 days?",
        ),
        good=Attempt(
            (_describe("users", USERS), _sql(ACTIVE_SQL, _rows(" active_users", "         8412"))),
            "8,412 users were active in the last 30 days (seen since then, not deleted, not internal accounts). "
            f"Query: {ACTIVE_SQL}",
            1.0,
        ),
        bad=Attempt(
            (LAST_LOGIN,),
            "The users table doesn't record logins, so I can't tell how many users were active.",
            0.0,
            "Guessed a last_login column; the table has last_seen_at. It should have described the table "
            "instead of giving up.",
        ),
        partial=Attempt(
            (
                _describe("users", USERS),
                _sql(
                    "SELECT COUNT(*) FROM users WHERE last_seen_at >= now() - interval '30 days'",
                    _rows(" count", "  9120"),
                ),
            ),
            "9,120 users were active in the last 30 days.",
            0.5,
            "Did not exclude deleted users (deleted_at IS NOT NULL) or internal accounts, so the count is too high.",
        ),
        slip=LAST_LOGIN,
        ground_truth=ACTIVE_SQL,
    ),
)

TOPICS: tuple[Topic, ...] = SUPPORT + SQL


def _fill(text: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def _retry_note(tool: str) -> str:
    if tool == "describe_table":
        return "That query failed; let me look at the table's actual columns before retrying."
    return "The tool failed; trying again."


def _trajectory(topic: Topic, attempt: Attempt, query: str, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """OpenAI-style messages: system, user, then an assistant tool call and its result per call, and the answer."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM[topic.domain]},
        {"role": "user", "content": query},
    ]
    failed = False
    for number, call in enumerate(attempt.calls, start=1):
        call_id = f"call_{number}"
        arguments = _fill(json.dumps(call.args), values)
        function = {"name": call.tool, "arguments": arguments}
        messages.append(
            {
                "role": "assistant",
                "content": _retry_note(call.tool) if failed else None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
        )
        result = _fill(call.result, values)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        failed = result.startswith("ERROR")
    messages.append({"role": "assistant", "content": _fill(attempt.answer, values)})
    return messages


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _trace(
    topic: Topic, number: int, attempt: Attempt, at: datetime, values: Mapping[str, str], latency_ms: int
) -> dict[str, Any]:
    query = topic.queries[number]
    return {
        "type": "trace",
        "schema_version": 1,
        "trace_id": f"{ID_PREFIX[topic.domain]}-{topic.key}-{number + 1}",
        "domain": topic.domain,
        "query": query,
        "trajectory": _trajectory(topic, attempt, query, values),
        "answer": _fill(attempt.answer, values),
        "created_at": _iso(at),
        "metadata": {"agent": AGENTS[topic.domain], "latency_ms": latency_ms},
    }


def _reward(trace_id: str, value: float, source: str, at: datetime, **texts: str | None) -> dict[str, Any]:
    """A reward event; a missing critique or ground truth is left out rather than sent as null."""
    event: dict[str, Any] = {"type": "reward", "schema_version": 1, "trace_id": trace_id, "value": value}
    event["source"] = source
    event.update((name, text) for name, text in texts.items() if text is not None)
    event["created_at"] = _iso(at)
    return event


def demo_stream(seed: int = 7) -> list[dict[str, Any]]:
    """Trace and reward events (wire-format dicts) in the order they 'arrive'."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible demo, not a secret
    runs = [(topic, number) for topic in TOPICS for number in range(len(topic.queries))]
    rng.shuffle(runs)
    early = set(rng.sample(range(len(runs)), OUT_OF_ORDER))  # traces their SDK delivers after the reward
    doubled = set(rng.sample([i for i in range(len(runs)) if i not in early], len(runs) // 8))
    arrivals: list[tuple[datetime, dict[str, Any]]] = []  # (when it arrives, the event)
    clock = START
    for position, (topic, number) in enumerate(runs):
        clock += timedelta(seconds=rng.randint(150, 420))
        attempt = topic.attempt(PATTERN[(number + TOPICS.index(topic)) % len(PATTERN)])
        name, company = CUSTOMERS[number % len(CUSTOMERS)]
        latency = rng.randint(350, 900) + sum(rng.randint(250, 1400) for _ in attempt.calls)
        values = {"email": f"{name}@{company}", "company": company, "ticket": str(48210 + position)}
        trace = _trace(topic, number, attempt, clock, values, latency)
        # Users give thumbs (0 or 1) on support answers; a grader scores the rest, with the correct SQL on failures.
        source = "user_thumbs" if topic.domain == "support" and attempt.value in (0.0, 1.0) else "grader"
        low, high = (1, 4) if position in early else (8 if source == "grader" else 3, 120)  # minutes
        rewarded = clock + timedelta(seconds=rng.randint(60 * low, 60 * high))
        critique = _fill(attempt.critique, values) if attempt.critique else None
        truth = topic.ground_truth if attempt.value < 1.0 else None
        arrivals.append(
            (
                rewarded,
                _reward(trace["trace_id"], attempt.value, source, rewarded, critique=critique, ground_truth=truth),
            )
        )
        if position in doubled:  # a second opinion from the other source
            other = "grader" if source == "user_thumbs" else "user_thumbs"
            value = attempt.value if other == "grader" else float(attempt.value >= 0.5)
            second = clock + timedelta(seconds=rng.randint(5 * 60, 120 * 60))
            arrivals.append((second, _reward(trace["trace_id"], value, other, second)))
        arrivals.append((rewarded + timedelta(minutes=rng.randint(2, 9)) if position in early else clock, trace))
    arrivals.sort(key=lambda arrival: arrival[0])  # stable: events arriving at the same second keep their order
    return [event for _, event in arrivals]
