"""``make bench``: what the bridge costs, measured, written to bench-results/.

Part 1 (the bridge alone): the service runs as its own process, exactly as
``codex-bridge serve`` does, with ``bench/fake_codex.py`` as its "codex
binary" so the children produce load at will; this process is the HTTP
client. Figures: deltas per second through the service (one stream, and
eight at once) with the service's CPU time, latency the bridge adds to each
delta with 50 concurrent streams, and memory per open stream.

Part 2 (the real binary): the service with real codex children pointed at
the scripted model. Figures: request → first SSE byte and → first content
delta with a warm pool, an idle child's restart (admin request → its
replacement ready), and what a cold child (spawn, initialize, thread, turn)
costs before its first delta, i.e. a pool of 0.

Each front door (chat completions, Responses, Ollama chat and generate) gets
its own throughput, added-latency and first-byte figures beside chat's.

Loopback only; every loop is bounded.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
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
TOKEN = b"tok "  # the text of every flood delta; appears nowhere else
FRAME = b"\ndata: "
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
            process.send_signal(2)  # SIGINT: graceful stop, children reaped
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()


@attrs.frozen
class Door:
    """A front door as the bench drives it: where to post, and how to tell
    its delta lines (the whole text also comes back in some final events)."""

    name: str
    path: str
    body: Callable[[str, str], dict[str, Any]]
    #: Lines of the stream that carry a text delta contain this.
    delta_line: bytes
    #: A delta's text follows this in its line.
    text_key: str


def _chat(text: str, model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}


DOORS = (
    Door("chat_completions", "/v1/chat/completions", _chat, b'"content":"', '"content":"'),
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
    ),
    Door(
        "ollama_generate",
        "/api/generate",
        lambda text, model: {"model": model, "prompt": text},
        b'"done":false',
        '"response":"',
    ),
)
CHAT = DOORS[0]


async def _flood_stream(service: Service, deltas: int, door: Door = CHAT) -> tuple[int, int]:
    """(deltas, delta frames) received; a lagging client gets merged frames."""
    seen = frames = 0
    tail = b""
    async with service.client.stream(
        "POST", door.path, json=door.body(f"flood {deltas}", "bench")
    ) as response:
        async for chunk in response.aiter_raw():
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if door.delta_line in line:
                    seen += line.count(TOKEN)
                    frames += 1
    return seen, frames


async def flood(
    service: Service, *, streams: int, deltas: int, door: Door = CHAT
) -> dict[str, Any]:
    counts: list[tuple[int, int]] = []
    cpu_before = _cpu_seconds(service.pid)
    start = time.perf_counter()

    async def one() -> None:
        counts.append(await _flood_stream(service, deltas, door))

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds(service.pid) - cpu_before
    total = sum(seen for seen, _ in counts)
    assert total == streams * deltas, f"{door.name}: lost deltas: {total} of {streams * deltas}"
    return {
        "streams": streams,
        "deltas": total,
        "delta_frames": sum(frames for _, frames in counts),
        "wall_s": round(wall, 3),
        "deltas_per_s": round(total / wall),
        "service_cpu_s": round(cpu, 3),
        "deltas_per_service_cpu_s": round(total / cpu) if cpu else None,
    }


async def tick(
    service: Service, *, streams: int, count: int, interval_ms: int, door: Door = CHAT
) -> dict[str, Any]:
    """Latency from the child writing a delta to the client reading it."""
    lags: list[float] = []
    key = door.text_key
    marked = door.delta_line.decode()

    async def one() -> None:
        async with service.client.stream(
            "POST", door.path, json=door.body(f"tick {count} {interval_ms}", "bench")
        ) as response:
            async for line in response.aiter_lines():
                marker = line.find(key)
                if marker < 0 or marked not in line or line[marker + len(key)] == '"':
                    continue
                now = time.time()
                stamp = float(line[marker + len(key) :].split(" ", 1)[0])
                lags.append((now - stamp) * 1000)

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    assert len(lags) == streams * count
    return {
        "streams": streams,
        "deltas": len(lags),
        "interval_ms": interval_ms,
        "added_latency_ms_p50": round(_percentile(lags, 0.5), 3),
        "added_latency_ms_p99": round(_percentile(lags, 0.99), 3),
        "added_latency_ms_max": round(max(lags), 3),
    }


async def hold(service: Service, *, streams: int) -> dict[str, Any]:
    """Service RSS with ``streams`` open, idle streams, per stream."""
    await trio.sleep(0.5)
    before = _rss_mib(service.pid)
    opened = 0
    done = trio.Event()
    all_open = trio.Event()

    async def one() -> None:
        nonlocal opened
        async with service.client.stream(
            "POST", "/v1/chat/completions", json=_chat("hold", "bench")
        ) as response:
            async for chunk in response.aiter_raw():
                if b"held" in chunk:
                    opened += 1
                    if opened == streams:
                        all_open.set()
                    break
            await done.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
        with trio.fail_after(60):
            await all_open.wait()
        await trio.sleep(0.5)
        during = _rss_mib(service.pid)
        done.set()
    return {
        "streams": streams,
        "service_rss_mib_idle": round(before, 1),
        "service_rss_mib_with_streams": round(during, 1),
        "kib_per_stream": round((during - before) * 1024 / streams, 1),
    }


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


async def observability_overhead(settings: dict[str, str], rounds: int = 4) -> dict[str, Any]:
    """One stream's deltas/s and the p99 added latency of 50 streams, with
    metrics and logging on and off, in alternating rounds (the machine's
    noise falls on both)."""
    figures: dict[str, dict[str, list[float]]] = {
        name: {"deltas_per_s": [], "latency_p99_ms": [], "latency_p50_ms": []}
        for name in ("observed", "bare")
    }
    configs = [("observed", OBSERVED), ("bare", BARE)]
    for round_ in range(rounds):
        # Each goes first in turn: the one after a service's teardown is not
        # always the same.
        for name, env in configs if round_ % 2 == 0 else configs[::-1]:
            async with service_process(FAKE_CODEX, {**settings, **env}, pool_size=2) as service:
                await flood(service, streams=1, deltas=5_000)  # warm up
                one = await flood(service, streams=1, deltas=100_000)
                lat = await tick(service, streams=50, count=100, interval_ms=20)
                # 50 turns and a thousand requests logged and counted here
                metrics = await service.client.get("/metrics")
                assert metrics.status_code == (200 if name == "observed" else 404)
            figures[name]["deltas_per_s"].append(one["deltas_per_s"])
            figures[name]["latency_p99_ms"].append(lat["added_latency_ms_p99"])
            figures[name]["latency_p50_ms"].append(lat["added_latency_ms_p50"])
    return {
        name: {
            figure: {"median": statistics.median(values), "runs": values}
            for figure, values in by_figure.items()
        }
        for name, by_figure in figures.items()
    }


async def main() -> None:
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    print("bridge alone (fake children) ...", file=sys.stderr)
    # The stand-in runs no command: there is no sandbox to prove.
    fake_settings = {"CODEX_BRIDGE_SANDBOX_MODE": "danger-full-access"}
    async with service_process(FAKE_CODEX, fake_settings, pool_size=2) as service:
        await flood(service, streams=1, deltas=5_000)  # warm up
        results["throughput_1_stream"] = await flood(service, streams=1, deltas=200_000)
        results["throughput_8_streams"] = await flood(service, streams=8, deltas=50_000)
        results["latency_50_streams"] = await tick(service, streams=50, count=100, interval_ms=20)
        results["memory_100_open_streams"] = await hold(service, streams=100)
        results["doors"] = {}
        for door in DOORS:
            await flood(service, streams=1, deltas=5_000, door=door)  # warm up
            results["doors"][door.name] = {
                "throughput_1_stream": await flood(service, streams=1, deltas=100_000, door=door),
                "throughput_8_streams": await flood(service, streams=8, deltas=25_000, door=door),
                "latency_50_streams": await tick(
                    service, streams=50, count=50, interval_ms=20, door=door
                ),
            }
    print("metrics and logging: on vs off ...", file=sys.stderr)
    results["observability_overhead"] = await observability_overhead(fake_settings)

    print("real codex children, scripted model ...", file=sys.stderr)
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

    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    trio.run(main)
