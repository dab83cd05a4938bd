"""``make bench``: what the bridge costs, measured, written to bench-results/.

Part 1 (the bridge alone, issue 14's figures): the service runs as its own
process, exactly as ``codex-bridge serve`` does, with ``bench/fake_codex.py``
as its "codex binary" so the children produce load at will. The client is
``bench/client.py`` in a process of its own (one asyncio httpx client that
splits frames without parsing them). Built-in references, read by the same
client in the same run: ``bench/reference.py``, a server of pre-encoded SSE
frames (unpaced, and paced as the children pace), and the stand-in children
read straight off their pipes. Figures: deltas/s (one stream; 64 unpaced),
write → read latency of 64 streams x 100 deltas/s, request → first byte
with an instant child, RSS per open stream, the same for every door, the
cost of conversation continuity (SQLite and Redis), and RSS over 20,000
short turns.

Part 2 (the real binary): the service with real codex children pointed at
the scripted model. Figures: request → first SSE byte and → first content
delta with a warm pool, an idle child's restart (admin request → its
replacement ready), and what a cold child (spawn, initialize, thread, turn)
costs before its first delta, i.e. a pool of 0.

Loopback only; every loop is bounded. Progress goes to stderr; the README's
tables of the run (:func:`markdown`) and the goals go to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from bridge.protocol import AgentMessageDelta
from codex_bridge.codex_binary import APP_SERVER_ARGS, PROJECT_ROOT, find_codex_binary
from fixtures.codex_home import write_codex_home
from fixtures.scripted_model import run_scripted_model
from supervisor.child import ChildLaunch
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool
from supervisor.turn import TurnRequest

RESULTS_DIR = PROJECT_ROOT / "bench-results"
FAKE_CODEX = PROJECT_ROOT / "bench" / "fake_codex.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where each measurement's figure is in the client's answer, for summaries.
FIGURE = {
    "flood": ("deltas_per_s",),
    "paced": ("p99_ms",),
    "direct": ("p99_ms",),
    "first_byte": ("first_byte", "p50_ms"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _wait_for_port(port: int, process: trio.Process) -> None:
    with trio.fail_after(60):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{process.args!r} ended: {process.returncode}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def _stop(process: trio.Process, signal: int = 2) -> None:
    process.send_signal(signal)  # SIGINT: graceful stop, children reaped
    with trio.move_on_after(15):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


class Service:
    def __init__(self, process: trio.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=120)

    @property
    def pid(self) -> int:
        return self.process.pid


@asynccontextmanager
async def service_process(
    codex_bin: Path, env: dict[str, str], pool_size: int
) -> AsyncIterator[Service]:
    """``codex-bridge serve`` in a process of its own."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        settings = {
            "CODEX_BRIDGE_PORT": str(port),
            "CODEX_BRIDGE_POOL_SIZE": str(pool_size),
            "CODEX_BRIDGE_CODEX_BIN": str(codex_bin),
            "CODEX_BRIDGE_WORKSPACE_DIR": str(Path(tmp) / "workspace"),
            "CODEX_BRIDGE_STATE_URL": f"sqlite:///{Path(tmp) / 'state.sqlite3'}",
            "CODEX_BRIDGE_MAX_TURNS_PER_CHILD": "64",
            "CODEX_BRIDGE_LOG_LEVEL": "warning",
        }
        settings.setdefault("CODEX_BRIDGE_CODEX_HOME", str(Path(tmp) / "home"))
        full_env = {**os.environ, **settings, **env}
        serve = [str(Path(sys.executable).parent / "codex-bridge"), "serve"]
        # Its log goes to a file, as journald would take it: written, not shown.
        log = (Path(tmp) / "service.log").open("wb")
        process = await trio.lowlevel.open_process(serve, env=full_env, stderr=log)
        service = Service(process, f"http://127.0.0.1:{port}")
        try:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await service.client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
            yield service
        finally:
            await service.client.aclose()
            await _stop(process)
            log.close()


@asynccontextmanager
async def reference_server() -> AsyncIterator[str]:
    """``bench/reference.py`` in a process of its own; its URL."""
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.reference", str(port)],
        cwd=str(PROJECT_ROOT),
        stdout=subprocess.DEVNULL,
    )
    try:
        await _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(process)


@asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """Debian's redis-server on a free loopback port, nothing persisted."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: install Debian's redis-server")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", workdir]
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL)
        try:
            await _wait_for_port(port, process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            await _stop(process, 15)


@attrs.frozen
class Door:
    """A front door as the bench drives it: where to post, how its stream is
    split into frames, and how to tell its delta frames (the whole text also
    comes back in some final events)."""

    name: str
    path: str
    body: Callable[[str, str], dict[str, Any]]
    #: Frames that carry a text delta contain this.
    delta_line: bytes
    #: A delta's text follows this in its frame.
    text_key: str
    #: What ends a frame: SSE's blank line, or NDJSON's newline.
    separator: bytes = b"\n\n"

    def spec(self, url: str, kind: str, **figures: Any) -> dict[str, Any]:
        """A measurement of ``bench/client.py`` on this door."""
        return {
            "kind": kind,
            "url": url,
            "path": self.path,
            "body": self.body("@TEXT@", "bench"),
            "sep": self.separator.decode(),
            "marker": self.delta_line.decode(),
            "key": self.text_key,
            **figures,
        }


def _chat(text: str, model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}


DOORS = (
    Door(
        "chat_completions",
        "/v1/chat/completions",
        _chat,
        b'"delta":{"content":"',
        '"delta":{"content":"',
    ),
    Door(
        "responses",
        "/v1/responses",
        lambda text, model: {"model": model, "stream": True, "input": text},
        b'"response.output_text.delta"',
        '"delta":"',
    ),
    Door(
        "ollama_chat",
        "/api/chat",
        lambda text, model: {"model": model, "messages": [{"role": "user", "content": text}]},
        b'"done":false',
        '"content":"',
        b"\n",
    ),
    Door(
        "ollama_generate",
        "/api/generate",
        lambda text, model: {"model": model, "prompt": text},
        b'"done":false',
        '"response":"',
        b"\n",
    ),
)
CHAT = DOORS[0]


async def client(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement by ``bench/client.py``, in a process of its own."""
    done = await trio.run_process(
        [sys.executable, "-m", "bench.client", json.dumps(spec)],
        cwd=str(PROJECT_ROOT),
        capture_stdout=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def measured(service: Service, spec: dict[str, Any]) -> dict[str, Any]:
    """A measurement on the service, with the service's CPU time."""
    before = _cpu_seconds(service.pid)
    result = await client(spec)
    cpu = _cpu_seconds(service.pid) - before
    result["service_cpu_s"] = round(cpu, 2)
    if "deltas" in result and cpu:
        result["deltas_per_service_cpu_s"] = round(result["deltas"] / cpu)
    return result


def _figure(result: dict[str, Any], kind: str) -> float:
    value: Any = result
    for key in FIGURE[kind]:
        value = value[key]
    return float(value)


async def repeated(
    runs: int, kind: str, measure: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``runs`` repetitions: the median and range of the figure, and every run."""
    results = [await measure() for _ in range(runs)]
    values = [_figure(result, kind) for result in results]
    return {
        "figure": ".".join(FIGURE[kind]),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": results,
    }


#: The stand-in runs no command (no sandbox to prove); 200 streams fit in
#: a pool of 2.
FAKE_SETTINGS = {
    "CODEX_BRIDGE_SANDBOX_MODE": "danger-full-access",
    "CODEX_BRIDGE_MAX_TURNS_PER_CHILD": "128",
}
#: 64 streams x 100 deltas/s, this long each.
PACED = {"streams": 64, "count": 300, "interval_ms": 10}


async def issue_figures(service: Service, reference: str, runs: int) -> dict[str, Any]:
    """Issue 14's table for chat completions, with its references."""
    url = service.url
    out: dict[str, Any] = {}
    progress("one stream, unpaced: service and reference server")
    out["one_stream_deltas_per_s"] = await repeated(
        runs, "flood", lambda: measured(service, CHAT.spec(url, "flood", streams=1, deltas=200_000))
    )
    out["one_stream_deltas_per_s_reference_server"] = await repeated(
        runs, "flood", lambda: client(CHAT.spec(reference, "flood", streams=1, deltas=200_000))
    )
    progress("64 streams, unpaced")
    out["streams_64_deltas_per_s"] = await repeated(
        runs, "flood", lambda: measured(service, CHAT.spec(url, "flood", streams=64, deltas=2_000))
    )
    out["streams_64_deltas_per_s_reference_server"] = await repeated(
        runs, "flood", lambda: client(CHAT.spec(reference, "flood", streams=64, deltas=2_000))
    )
    progress("64 streams x 100 deltas/s: service, paced reference server, children direct")
    out["paced_64x100_latency"] = await repeated(
        runs, "paced", lambda: measured(service, CHAT.spec(url, "paced", **PACED))
    )
    out["paced_64x100_latency_reference_server"] = await repeated(
        runs, "paced", lambda: client(CHAT.spec(reference, "paced", **PACED))
    )
    direct = {
        "kind": "direct",
        "fake_codex": str(FAKE_CODEX),
        "children": 2,
        "turns_per_child": PACED["streams"] // 2,
        "count": PACED["count"],
        "interval_ms": PACED["interval_ms"],
    }
    out["paced_64x100_latency_children_direct"] = await repeated(
        runs, "direct", lambda: client(direct)
    )
    progress("request -> first byte, instant child")
    first = {"warmup": 50, "requests": 300}
    out["first_byte_instant"] = await repeated(
        runs, "first_byte", lambda: client(CHAT.spec(url, "first_byte", **first))
    )
    out["first_byte_instant_reference_server"] = await repeated(
        runs, "first_byte", lambda: client(CHAT.spec(reference, "first_byte", **first))
    )
    return out


async def door_figures(service: Service, door: Door, runs: int) -> dict[str, Any]:
    url = service.url
    progress(f"door {door.name}")
    return {
        "one_stream_deltas_per_s": await repeated(
            runs,
            "flood",
            lambda: measured(service, door.spec(url, "flood", streams=1, deltas=100_000)),
        ),
        "streams_64_deltas_per_s": await repeated(
            runs,
            "flood",
            lambda: measured(service, door.spec(url, "flood", streams=64, deltas=1_000)),
        ),
        "paced_64x100_latency": await repeated(
            runs, "paced", lambda: client(door.spec(url, "paced", **{**PACED, "count": 200}))
        ),
        "first_byte_instant": await repeated(
            runs,
            "first_byte",
            lambda: client(door.spec(url, "first_byte", warmup=30, requests=200)),
        ),
    }


async def continuity(service: Service, tag: str) -> dict[str, Any]:
    """First byte of conversation turns (whole history sent) vs stateless."""
    return await client(
        CHAT.spec(service.url, "conversation", conversations=20, turns=10, warmup=30, tag=tag)
    )


async def memory_per_stream(runs: int) -> dict[str, Any]:
    """RSS per open stream, each run on a fresh service: idle after a short
    warm-up, then 100 and 200 streams each streaming 4 deltas/s (judged on
    what the second 100 add; see bench.client.hold)."""
    results = []
    for _ in range(runs):
        async with service_process(FAKE_CODEX, FAKE_SETTINGS, pool_size=2) as service:
            warm = CHAT.spec(service.url, "first_byte", warmup=0, requests=50)
            await client(warm)
            await client(CHAT.spec(service.url, "flood", streams=8, deltas=1_000))
            results.append(
                await client(
                    CHAT.spec(service.url, "hold", pid=service.pid, streams=200, interval_ms=250)
                )
            )
    per_stream = [r["kib_per_stream"] for r in results]
    from_idle = [r["kib_per_stream_from_idle"] for r in results]
    return {
        "median_kib_per_stream": round(statistics.median(per_stream), 1),
        "min": min(per_stream),
        "max": max(per_stream),
        "median_kib_per_stream_from_idle": round(statistics.median(from_idle), 1),
        "runs": results,
    }


async def long_run(turns: int) -> dict[str, Any]:
    """Short turns in a row, 8 at a time, through a pool of 2 stand-ins."""
    async with service_process(FAKE_CODEX, FAKE_SETTINGS, pool_size=2) as service:
        checkpoints = [1_000, turns // 4, turns // 2, turns]
        result = await client(
            CHAT.spec(
                service.url,
                "turns",
                pid=service.pid,
                total=turns,
                concurrency=8,
                checkpoints=checkpoints,
            )
        )
    marks = result["checkpoints"]
    result["service_rss_last_over_first"] = round(
        marks[-1]["service_rss_kib"] / marks[0]["service_rss_kib"], 3
    )
    return result


async def warm_latency(service: Service, *, requests: int, door: Door = CHAT) -> dict[str, Any]:
    first_byte: list[float] = []
    first_delta: list[float] = []
    first_text = door.text_key.encode() + b"H"
    for _ in range(requests):
        start = time.perf_counter()
        got_byte = got_delta = None
        async with service.client.stream(
            "POST", door.path, json=door.body("[scenario:plain] hi", "scripted-model")
        ) as response:
            async for chunk in response.aiter_raw():
                now = time.perf_counter()
                if got_byte is None:
                    got_byte = now
                if got_delta is None and first_text in chunk:
                    got_delta = now
        assert got_byte is not None
        assert got_delta is not None
        first_byte.append((got_byte - start) * 1000)
        first_delta.append((got_delta - start) * 1000)
    return {
        "requests": requests,
        "first_sse_byte_ms_p50": round(statistics.median(first_byte), 1),
        "first_sse_byte_ms_max": round(max(first_byte), 1),
        "first_delta_ms_p50": round(statistics.median(first_delta), 1),
        "first_delta_ms_min": round(min(first_delta), 1),
        "first_delta_ms_max": round(max(first_delta), 1),
    }


async def restart_latency(service: Service, *, runs: int) -> dict[str, Any]:
    """An idle real child restarted through the admin API: request → new child ready."""
    took: list[float] = []
    for _ in range(runs):
        before = (await service.client.get("/admin/pool")).json()["children"][0]
        start = time.perf_counter()
        response = await service.client.post("/admin/children/0/restart")
        assert response.status_code == 202, response.text
        with trio.fail_after(60):
            while True:
                now = (await service.client.get("/admin/pool")).json()["children"][0]
                if now["pid"] != before["pid"] and now["state"] == "idle":
                    break
                await trio.sleep(0.005)
        took.append((time.perf_counter() - start) * 1000)
    return {
        "runs": runs,
        "restart_to_ready_ms_p50": round(statistics.median(took), 1),
        "restart_to_ready_ms_min": round(min(took), 1),
        "restart_to_ready_ms_max": round(max(took), 1),
    }


async def cold_latency(codex_bin: Path, base_url: str, *, runs: int) -> dict[str, Any]:
    """Spawn → initialize → thread → turn → first delta, one fresh child each."""
    totals: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, **write_codex_home(home, base_url), "CODEX_HOME": str(home)}
        launch = ChildLaunch(
            argv=(str(codex_bin), *APP_SERVER_ARGS), env=env, cwd=tmp, codex_home=str(home)
        )
        for _ in range(runs):
            start = time.perf_counter()
            pool = Pool(1, launch)
            mux = TurnMultiplexer(pool, workspace_dir=tmp)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                async with mux.open_turn(TurnRequest("[scenario:plain] hi")) as turn:
                    async for event in turn:
                        if isinstance(event, AgentMessageDelta):
                            totals.append((time.perf_counter() - start) * 1000)
                            break
                nursery.cancel_scope.cancel()
    return {
        "runs": runs,
        "spawn_to_first_delta_ms_p50": round(statistics.median(totals), 1),
        "spawn_to_first_delta_ms_min": round(min(totals), 1),
        "spawn_to_first_delta_ms_max": round(max(totals), 1),
    }


#: Metrics and logs on (as shipped, JSON lines, every request and turn
#: logged), against metrics off and only warnings logged.
OBSERVED = {
    "CODEX_BRIDGE_METRICS": "true",
    "CODEX_BRIDGE_LOG_LEVEL": "info",
    "CODEX_BRIDGE_LOG_FORMAT": "json",
}
BARE = {"CODEX_BRIDGE_METRICS": "false", "CODEX_BRIDGE_LOG_LEVEL": "warning"}


async def observability_overhead(rounds: int) -> dict[str, Any]:
    """One stream's deltas/s and the paced p99 of 64 streams, with metrics
    and logging on and off, in alternating rounds (the machine's noise falls
    on both)."""
    figures: dict[str, dict[str, list[float]]] = {
        name: {"deltas_per_s": [], "latency_p99_ms": [], "latency_p50_ms": []}
        for name in ("observed", "bare")
    }
    configs = [("observed", OBSERVED), ("bare", BARE)]
    for round_ in range(rounds):
        # Each goes first in turn: the one after a service's teardown is not
        # always the same.
        for name, env in configs if round_ % 2 == 0 else configs[::-1]:
            async with service_process(
                FAKE_CODEX, {**FAKE_SETTINGS, **env}, pool_size=2
            ) as service:
                url = service.url
                await client(CHAT.spec(url, "flood", streams=1, deltas=5_000))  # warm up
                one = await client(CHAT.spec(url, "flood", streams=1, deltas=100_000))
                lat = await client(CHAT.spec(url, "paced", **{**PACED, "count": 200}))
                # 64 turns and a thousand requests logged and counted here
                metrics = await service.client.get("/metrics")
                assert metrics.status_code == (200 if name == "observed" else 404)
            figures[name]["deltas_per_s"].append(one["deltas_per_s"])
            figures[name]["latency_p99_ms"].append(lat["p99_ms"])
            figures[name]["latency_p50_ms"].append(lat["p50_ms"])
    return {
        name: {
            figure: {"median": statistics.median(values), "runs": values}
            for figure, values in by_figure.items()
        }
        for name, by_figure in figures.items()
    }


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's goals against this run's medians."""
    fig = results["issue_14"]
    one = fig["one_stream_deltas_per_s"]["median"]
    ref = fig["one_stream_deltas_per_s_reference_server"]["median"]
    p99 = fig["paced_64x100_latency"]["median"]
    ref_p99 = fig["paced_64x100_latency_reference_server"]["median"]
    marks = results["long_run"]["checkpoints"]
    return {
        "one_stream_vs_reference_server": {"ratio": round(one / ref, 2), "goal": ">= 0.8"},
        "streams_64_deltas_per_s": {
            "value": fig["streams_64_deltas_per_s"]["median"],
            "goal": ">= 80000",
        },
        "paced_p99_over_reference_server_ms": {
            "value": round(p99 - ref_p99, 2),
            "goal": "< 5",
        },
        "first_byte_p50_ms": {"value": fig["first_byte_instant"]["median"], "goal": "< 2"},
        "kib_per_stream": {
            "value": results["memory_per_stream"]["median_kib_per_stream"],
            "goal": "< 32",
        },
        "service_rss_20k_over_1k": {
            "value": round(marks[-1]["service_rss_kib"] / marks[0]["service_rss_kib"], 3),
            "goal": "<= 1.10",
        },
    }


def _range(figure: dict[str, Any], fmt: str = "{:,.0f}") -> str:
    low, high = fmt.format(figure["min"]), fmt.format(figure["max"])
    return f"{fmt.format(figure['median'])} ({low}-{high})"


def _latency(figure: dict[str, Any]) -> str:
    p50 = statistics.median(run["p50_ms"] for run in figure["runs"])
    return f"p50 {p50:.2f} ms, p99 {_range(figure, '{:.1f}')} ms"


def _first_byte(figure: dict[str, Any]) -> str:
    p99 = statistics.median(run["first_byte"]["p99_ms"] for run in figure["runs"])
    return f"p50 {_range(figure, '{:.2f}')} ms, p99 {p99:.1f} ms"


def markdown(results: dict[str, Any]) -> str:
    """The README's tables of a run (medians of the repetitions, ranges)."""
    fig, goal = results["issue_14"], results["goals"]
    memory, marks = results["memory_per_stream"], results["long_run"]["checkpoints"]
    first, last = marks[0], marks[-1]
    children = [kib for name, kib in last["children_rss_kib"].items() if name.startswith("child")]
    rows = [
        "| figure | service | reference, same run, same client | goal |",
        "|---|---|---|---|",
        f"| one stream, deltas/s | {_range(fig['one_stream_deltas_per_s'])} | pre-encoded SSE "
        f"server: {_range(fig['one_stream_deltas_per_s_reference_server'])} | ≥ 0.8x the "
        f"server: {goal['one_stream_vs_reference_server']['ratio']}x |",
        f"| 64 streams unpaced, aggregate deltas/s | {_range(fig['streams_64_deltas_per_s'])} "
        f"| pre-encoded SSE server: {_range(fig['streams_64_deltas_per_s_reference_server'])} "
        "| ≥ 80,000 |",
        f"| 64 streams x 100 deltas/s, write → read latency | "
        f"{_latency(fig['paced_64x100_latency'])} | paced pre-encoded SSE server: "
        f"{_latency(fig['paced_64x100_latency_reference_server'])}; the children read off "
        f"their pipes: {_latency(fig['paced_64x100_latency_children_direct'])} | p99 < the "
        f"server's + 5 ms: + {goal['paced_p99_over_reference_server_ms']['value']} ms |",
        f"| request → first byte, instant child (300 in a row) | "
        f"{_first_byte(fig['first_byte_instant'])} | pre-encoded SSE server: "
        f"{_first_byte(fig['first_byte_instant_reference_server'])} | p50 < 2 ms |",
        f"| RSS per open stream (4 deltas/s each): what streams 101-200 add | "
        f"{memory['median_kib_per_stream']} KiB ({memory['min']}-{memory['max']}); "
        f"idle → 200 streams: {memory['median_kib_per_stream_from_idle']} KiB | — "
        "| < 32 KiB |",
        f"| service RSS after {first['turns']:,} and {last['turns']:,} short turns "
        f"(8 at a time, pool of 2) | {first['service_rss_kib'] / 1024:.1f} → "
        f"{last['service_rss_kib'] / 1024:.1f} MiB (x {goal['service_rss_20k_over_1k']['value']}); "
        f"each child {', '.join(f'{kib / 1024:.1f}' for kib in children)} MiB at the end | — "
        "| within 10 % |",
        "",
        "| door | one stream, deltas/s | 64 streams, deltas/s | 64 x 100/s latency "
        "| first byte, instant child |",
        "|---|---|---|---|---|",
        f"| chat completions | {_range(fig['one_stream_deltas_per_s'])} | "
        f"{_range(fig['streams_64_deltas_per_s'])} | {_latency(fig['paced_64x100_latency'])} | "
        f"{_first_byte(fig['first_byte_instant'])} |",
    ]
    for door in DOORS[1:]:
        d = results["doors"][door.name]
        rows.append(
            f"| `{door.path}` | {_range(d['one_stream_deltas_per_s'])} | "
            f"{_range(d['streams_64_deltas_per_s'])} | {_latency(d['paced_64x100_latency'])} | "
            f"{_first_byte(d['first_byte_instant'])} |"
        )
    rows += [
        "",
        "| store | first byte, conversation turns (whole history sent) | first byte, "
        "stateless turns, alternating with them |",
        "|---|---|---|",
    ]
    for store in ("sqlite", "redis"):
        c = results[f"continuity_{store}"]
        with_ = c["conversation_first_byte"]
        without = c["stateless_first_byte"]
        rows.append(
            f"| {'SQLite' if store == 'sqlite' else 'Redis'} | p50 {with_['p50_ms']:.2f} ms, "
            f"p99 {with_['p99_ms']:.1f} ms | p50 {without['p50_ms']:.2f} ms, "
            f"p99 {without['p99_ms']:.1f} ms |"
        )
    return "\n".join(rows) + "\n"


async def main() -> None:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
    }
    progress("bridge alone (stand-in children), client and references in processes of their own")
    async with (
        reference_server() as reference,
        service_process(FAKE_CODEX, FAKE_SETTINGS, pool_size=2) as service,
    ):
        await client(CHAT.spec(service.url, "flood", streams=1, deltas=5_000))  # warm up
        results["issue_14"] = await issue_figures(service, reference, runs=3)
        results["doors"] = {
            door.name: await door_figures(service, door, runs=3) for door in DOORS[1:]
        }
        progress("conversation continuity, SQLite")
        results["continuity_sqlite"] = await continuity(service, "sqlite")
    async with redis_server() as redis_url:
        redis_settings = {**FAKE_SETTINGS, "CODEX_BRIDGE_STATE_URL": redis_url}
        async with service_process(FAKE_CODEX, redis_settings, pool_size=2) as service:
            progress("conversation continuity, Redis")
            results["continuity_redis"] = await continuity(service, "redis")
    progress("RSS per open stream (fresh services)")
    results["memory_per_stream"] = await memory_per_stream(runs=2)
    progress("20,000 short turns, 8 at a time, pool of 2")
    results["long_run"] = await long_run(20_000)
    results["goals"] = goals(results)
    progress("metrics and logging: on vs off")
    results["observability_overhead"] = await observability_overhead(rounds=2)

    progress("real codex children, scripted model")
    codex_bin = find_codex_binary(os.environ.get("CODEX_BRIDGE_CODEX_BIN"))
    async with run_scripted_model() as model:
        with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
            home = Path(tmp) / "home"
            extra = write_codex_home(home, model.base_url)
            env = {**extra, "CODEX_BRIDGE_CODEX_HOME": str(home)}
            async with service_process(codex_bin, env, pool_size=2) as service:
                await warm_latency(service, requests=3)  # warm up
                results["real_warm_pool"] = await warm_latency(service, requests=20)
                results["real_warm_pool_doors"] = {
                    door.name: await warm_latency(service, requests=20, door=door) for door in DOORS
                }
                results["real_child_restart"] = await restart_latency(service, runs=5)
        results["real_cold_child"] = await cold_latency(codex_bin, model.base_url, runs=5)
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)

    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps({"goals": results["goals"], "bench_wall_s": results["bench_wall_s"]}, indent=2)
    )
    progress(f"written to {out}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:  # the README's tables, from the latest run
        print(markdown(json.loads((RESULTS_DIR / "latest.json").read_text())))
    else:
        trio.run(main)
