"""The metrics of ``GET /metrics`` (http_front/telemetry.py) and the Grafana
dashboard built on them (packaging/grafana-dashboard.json).

The dashboard is checked against what the service really exposes: every
metric its queries name, every label they group by or match on, must be in a
scrape of the service on fake children. Then what the metrics say after a
short mixed run, and who may read them.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridge.protocol import parse_rate_limits
from http_front.access import ApiKey
from http_front.app import BridgeApp
from http_front.asgi import Message
from supervisor import Supervisor
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool
from tests.helpers import (
    REPO_ROOT,
    RunningService,
    chat_body,
    content_of,
    fake,
    make_settings,
    running_service,
    sse_events,
)

TIMEOUT_S = 30
DASHBOARD = REPO_ROOT / "packaging" / "grafana-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
KEY = "sk-test-0123456789abcdef"
KEY_NAME = "ci"
ADMIN_TOKEN = "admin-0123456789"
MODEL = "fake-model"
POOL_SIZE = 2

#: Labels Prometheus adds to every sample it scrapes: on no sample of ours.
TARGET_LABELS = frozenset({"job", "instance"})
METRIC_NAME = re.compile(r"codex_bridge_[a-z_]+")
#: ``name{matchers}``: the labels a selector matches on.
SELECTOR = re.compile(r"(codex_bridge_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
#: ``agg by (labels) (argument)``, the only form the dashboard may use.
AGGREGATION_BY = re.compile(
    r"\b(?:sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile)"
    r"\s+by\s*\(([^)]*)\)\s*\("
)
ANY_BY = re.compile(r"\bby\s*\(")
SERVER_TIMING = re.compile(r"bridge;dur=\d+\.\d\d, codex;dur=\d+\.\d, queue;dur=\d+\.\d")

#: sample name -> the labels of each of its samples
Samples = dict[str, list[dict[str, str]]]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# -- reading the dashboard and a scrape ---------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every query: panel targets and template variables."""
    found = [
        (f"panel {panel['id']} {panel['title']!r}", str(target["expr"]))
        for panel in all_panels(dashboard)
        for target in panel.get("targets", ())
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        found.append(
            (f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query)
        )
    return found


def parse_scrape(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: str, name: str, **labels: str) -> float | None:
    return values(scraped).get((name, frozenset(labels.items())))


def labelled(scraped: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in values(scraped).items() if n == name}


def _argument(expr: str, opening: int) -> str:
    """The text inside the parenthesis opened at ``expr[opening]``."""
    depth = 0
    for index in range(opening, len(expr)):
        if expr[index] == "(":
            depth += 1
        elif expr[index] == ")":
            depth -= 1
            if depth == 0:
                return expr[opening + 1 : index]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def query_problems(expr: str, samples: Samples) -> list[str]:
    """What in ``expr`` the scrape does not back: metric names no sample
    has, labels it matches on or groups by that the metric's samples lack."""
    problems = []
    names = METRIC_NAME.findall(expr)
    if not names:
        problems.append("names no codex_bridge_ metric")
    labels_of = {
        name: {label for entry in samples.get(name, ()) for label in entry} | TARGET_LABELS
        for name in names
    }
    for name in names:
        if name not in samples:
            problems.append(f"{name} is not among the scraped samples")
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if name in samples and label not in labels_of[name]:
                problems.append(f"{name} has no label {label!r} to match on")
    prefix_forms = list(AGGREGATION_BY.finditer(expr))
    if len(prefix_forms) != len(ANY_BY.findall(expr)):
        problems.append("a 'by (...)' not in the form 'agg by (labels) (argument)'")
    for match in prefix_forms:
        grouped = [label.strip() for label in match.group(1).split(",") if label.strip()]
        for name in METRIC_NAME.findall(_argument(expr, match.end() - 1)):
            for label in grouped:
                if name in samples and label not in labels_of[name]:
                    problems.append(f"{name} has no label {label!r} to group by")
    return problems


def dashboard_problems(dashboard: dict[str, Any], samples: Samples) -> list[str]:
    return [
        f"{where}: {problem} (in {expr!r})"
        for where, expr in expressions(dashboard)
        for problem in query_problems(expr, samples)
    ]


# -- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_model() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "codex-bridge"
    assert dashboard["title"] == "codex-bridge"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # an export for sharing: Grafana assigns the id
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    panels = list(all_panels(dashboard))
    kinds = {p["type"] for p in panels}
    assert kinds <= {"row", "timeseries", "stat", "bargauge"}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    assert {("panel", kind) for kind in kinds - {"row"}} <= required

    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            # every query follows the dashboard's job and instance choice
            assert 'job=~"$job"' in target["expr"], target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"job", "instance"}
    for variable in variables.values():
        assert variable["datasource"]["uid"] == DATASOURCE
    assert re.fullmatch(
        r"label_values\(codex_bridge_ready(\{[^}]*\})?, instance\)",
        variables["instance"]["query"]["query"],
    )

    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Latency",
        "Turns & refusals",
        "Children",
        "Tokens",
        "Codex account",
    ]
    # the grid: inside 24 columns, no two panels on one cell
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_the_dashboard_check_catches_broken_queries() -> None:
    """The dashboard check is only as good as its failures: each kind of
    mistake, and a broken query in a copy of the dashboard, is reported."""
    samples: Samples = {
        "codex_bridge_requests_total": [{"route": "/v1/models", "status": "200"}],
        "codex_bridge_request_duration_seconds_bucket": [{"route": "/v1/models", "le": "0.1"}],
        "codex_bridge_ready": [{}],
    }
    good = 'sum by (status) (rate(codex_bridge_requests_total{job=~"$job"}[5m]))'
    assert query_problems(good, samples) == []
    assert (
        query_problems(
            "histogram_quantile(0.5, sum by (le, route) "
            "(rate(codex_bridge_request_duration_seconds_bucket[5m])))",
            samples,
        )
        == []
    )
    broken = {
        "rate(codex_bridge_requests[5m])": "not among the scraped samples",  # no _total
        "codex_bridge_request_duration_seconds": "not among the scraped samples",
        'codex_bridge_requests_total{stauts="200"}': "no label 'stauts' to match on",
        "sum by (code) (codex_bridge_requests_total)": "no label 'code' to group by",
        "sum(codex_bridge_requests_total) by (status)": "not in the form",
        "vector(1)": "names no codex_bridge_ metric",
    }
    for expr, problem in broken.items():
        assert any(problem in p for p in query_problems(expr, samples)), expr

    dashboard = load_dashboard()
    mangled = copy.deepcopy(dashboard)
    target = next(p for p in all_panels(mangled) if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace("codex_bridge_", "codex_bridge_no_such_", 1)
    everything: Samples = {
        name: [{}] for _, expr in expressions(dashboard) for name in METRIC_NAME.findall(expr)
    }
    assert any("no_such" in p for p in dashboard_problems(mangled, everything))


async def scrape(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_every_dashboard_query_names_what_the_service_exposes(tmp_path: Path) -> None:
    """A run that gives every labelled family a sample, then its scrape
    against every query of the dashboard."""
    settings = make_settings(
        tmp_path, pool_size=POOL_SIZE, api_keys=(ApiKey.from_secret(KEY_NAME, KEY),)
    )
    key = bearer(KEY)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            chat = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=key
            )
            missing = await client.get("/v1/no-such-route", headers=key)
            models = await client.get("/v1/models", headers=key)
            # a refusal: the drained pool takes no turn (the model catalog is cached)
            assert (await client.post("/admin/pool/drain")).status_code == 200
            refused = await client.post(
                "/v1/chat/completions", json=chat_body("hi", model=MODEL), headers=key
            )
            assert (await client.post("/admin/pool/undrain")).status_code == 200
            # fake children report no rate limits: what a child's client keeps
            # of codex's account/rateLimits/updated, as codex sends it
            reported = parse_rate_limits(
                {
                    "rateLimits": {
                        "primary": {"usedPercent": 42, "windowDurationMins": 300},
                        "secondary": {"usedPercent": 7.5, "windowDurationMins": 10080},
                    }
                }
            )
            codex = svc.handle.pool.children[0].client
            codex.rate_limits, codex.rate_limits_at = reported, time.monotonic()
            scraped = await _scrape_until(
                svc,
                lambda text: (
                    value(text, "codex_bridge_refusals_total", kind="no_child") == 1
                    and value(text, "codex_bridge_children", state="idle") == POOL_SIZE
                ),
            )
    assert chat.status_code == 200
    assert missing.status_code == 404
    assert models.status_code == 200
    assert refused.status_code == 503

    # the run gave every family a sample: none is left out of the check
    empty = [f.name for f in text_string_to_metric_families(scraped) if not f.samples]
    assert not empty, empty
    samples = parse_scrape(scraped)
    problems = dashboard_problems(load_dashboard(), samples)
    assert not problems, "\n".join(problems)
    assert value(scraped, "codex_bridge_codex_rate_limit_used_ratio", window="primary") == 0.42
    assert value(scraped, "codex_bridge_codex_rate_limit_used_ratio", window="secondary") == 0.075


async def _scrape_until(svc: RunningService, done: Callable[[str], bool]) -> str:
    """A scrape once ``done(scrape)``: a request's metrics are counted as it
    ends, which may be just after its client has read the answer."""
    while True:
        scraped = await scrape(svc.client)
        if done(scraped):
            return scraped
        await trio.sleep(0.02)


# -- what the metrics say ---------------------------------------------------------------------


async def test_metrics_after_a_short_mixed_run(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        pool_size=POOL_SIZE,
        api_keys=(ApiKey.from_secret(KEY_NAME, KEY),),
        admin_token=ADMIN_TOKEN,
    )
    admin = bearer(ADMIN_TOKEN)
    chat_route = "/v1/chat/completions"
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            answers = [
                await client.post(chat_route, json=chat_body("hi", model=MODEL), headers=h)
                for h in (bearer(KEY), bearer(KEY), bearer("sk-wrong"))
            ]
            # who may read them: the admin token, nothing else
            refused = {
                "no token": await client.get("/metrics"),
                "wrong token": await client.get("/metrics", headers=bearer("nope")),
                "an API key": await client.get("/metrics", headers=bearer(KEY)),
            }
            while True:
                scraped = await scrape(client, **admin)
                # Each request is counted just after its last byte: wait for all.
                ok = value(scraped, "codex_bridge_requests_total", route=chat_route, status="200")
                done = value(scraped, "codex_bridge_requests_total", route=chat_route, status="401")
                idle = value(scraped, "codex_bridge_children", state="idle")
                if ok == 2 and done == 1 and idle == POOL_SIZE:
                    break
                await trio.sleep(0.02)
    first, second, unauthorized = answers
    for answer in (first, second):
        assert answer.status_code == 200
        assert content_of(sse_events(answer.content)) == "d0 d1 d2 "
        assert SERVER_TIMING.fullmatch(answer.headers["server-timing"]), answer.headers
    assert unauthorized.status_code == 401
    assert SERVER_TIMING.fullmatch(unauthorized.headers["server-timing"])
    for why, response in refused.items():
        assert response.status_code == 401, why
        assert response.json()["error"]["code"] == "invalid_admin_token", why

    def only(name: str, **labels: str) -> float:
        found = value(scraped, name, **labels)
        assert found is not None, (name, labels, scraped)
        return found

    assert only("codex_bridge_requests_total", route=chat_route, status="200") == 2
    assert only("codex_bridge_requests_total", route=chat_route, status="401") == 1
    assert only("codex_bridge_request_duration_seconds_count", route=chat_route) == 3
    assert only("codex_bridge_time_to_first_token_seconds_count", route=chat_route) == 2
    assert only("codex_bridge_bridge_overhead_seconds_count", route=chat_route) == 3
    assert only("codex_bridge_turn_duration_seconds_count", outcome="completed") == 2
    assert only("codex_bridge_turn_duration_seconds_sum", outcome="completed") > 0
    assert only("codex_bridge_queue_wait_seconds_count") == 2
    assert set(labelled(scraped, "codex_bridge_turn_duration_seconds_count")) == {
        frozenset({("outcome", "completed")})
    }
    # a wrong API key is no refusal of a turn: it is in requests_total, by its status
    assert labelled(scraped, "codex_bridge_refusals_total") == {}

    tokens = {
        dict(labels)["kind"]: v
        for labels, v in labelled(scraped, "codex_bridge_tokens_total").items()
    }
    assert tokens["input"] > 0
    assert tokens["output"] > 0
    by_key = labelled(scraped, "codex_bridge_key_tokens_total")
    assert {dict(labels)["key"] for labels in by_key} == {KEY_NAME}
    assert only("codex_bridge_key_tokens_total", key=KEY_NAME, kind="input") == tokens["input"]
    assert sum(by_key.values()) == sum(tokens.values())  # every turn ran with the key

    children = {
        dict(labels)["state"]: v for labels, v in labelled(scraped, "codex_bridge_children").items()
    }
    assert children == {
        "idle": POOL_SIZE,
        "busy": 0,
        "draining": 0,
        "starting": 0,
        "stopping": 0,
        "broken": 0,
    }
    rss = {
        dict(labels)["child"]: v
        for labels, v in labelled(scraped, "codex_bridge_child_rss_bytes").items()
    }
    assert set(rss) == {str(slot) for slot in range(POOL_SIZE)}
    assert all(v > 1024 * 1024 for v in rss.values()), rss
    restarts = labelled(scraped, "codex_bridge_child_restarts_total")
    assert {dict(labels)["reason"] for labels in restarts} >= {"crashed", "operator", "rolling"}
    assert set(restarts.values()) == {0}
    assert only("codex_bridge_ready") == 1
    assert only("codex_bridge_turns_active") == 0
    assert only("codex_bridge_queue_depth") == 0
    # no rate limits reported by the fake children: no window at all, not a 0
    assert labelled(scraped, "codex_bridge_codex_rate_limit_used_ratio") == {}
    assert only("codex_bridge_process_resident_memory_bytes") > 0
    assert only("codex_bridge_process_cpu_seconds_total") > 0


# -- who may read them ------------------------------------------------------------------------


async def test_without_admin_token_metrics_answer_loopback_requests_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=(ApiKey.from_secret(KEY_NAME, KEY),))
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            local = await client.get("/metrics")
            by_localhost = await client.get("/metrics", headers={"host": "localhost"})
            rebound = await client.get("/metrics", headers={"host": "bridge.example.com"})
            page = await client.get("/metrics", headers={"origin": "https://evil.example"})
    assert local.status_code == 200
    assert by_localhost.status_code == 200
    assert rebound.status_code == 403
    assert rebound.json()["error"]["code"] == "admin_forbidden"
    assert page.status_code == 403
    assert page.json()["error"]["code"] == "origin_not_allowed"


async def test_without_admin_token_metrics_refuse_remote_clients() -> None:
    """A client from another address: driven through the ASGI app, since every
    real connection in a test comes from loopback."""
    pool = Pool(1, fake("ok"))
    app = BridgeApp(Supervisor(pool, TurnMultiplexer(pool)))
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for client in (("10.1.2.3", 5000), ("127.0.0.1", 5000)):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "raw_path": b"/metrics",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8088")],
            "client": client,
        }
        await app(scope, receive, send)
    assert statuses == [403, 200]


async def test_metrics_public_opens_them_to_anyone(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        api_keys=(ApiKey.from_secret(KEY_NAME, KEY),),
        admin_token=ADMIN_TOKEN,
        metrics_public=True,
    )
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            anonymous = await svc.client.get("/metrics", headers={"host": "bridge.example.com"})
            admin = await svc.client.get("/admin/pool", headers={"host": "bridge.example.com"})
    assert anonymous.status_code == 200
    assert "codex_bridge_ready 1.0" in anonymous.text
    assert admin.status_code == 401  # the admin API keeps its token


@pytest.mark.parametrize("public", [False, True])
async def test_metrics_turned_off(tmp_path: Path, public: bool) -> None:
    settings = make_settings(tmp_path, metrics=False, metrics_public=public)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            response = await svc.client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
