"""``make adversarial``: the real service under faults, measured.

Every phase runs ``codex-bridge serve`` as its own process, exactly as a user
runs it (a fresh one per phase, pool of 2, the default hardening settings),
with real ``codex app-server`` children pointed at the scripted model; this
process is the scripted model, the clients and the faults. Results go to
``bench-results/adversarial.json``, each phase's service log to
``bench-results/adversarial-logs/``.

1. memory: RSS of the service and of each child over 5,000 one-off turns
   (snapshots at 0, 1,500 and 5,000), then over 1,500 conversation turns
   (50 conversations x 30 turns, the growing history sent each time);
   failed requests, child restarts and recycles. Each part has a time budget
   (ONE_OFF_BUDGET_S, CONVERSATION_BUDGET_S) and reports how far it got.
2. stopped_stream: a child SIGSTOPped in the middle of a long stream: time
   until the stream ends (error chunk, ``[DONE]``) and the error's code.
3. stopped_idle_child: one idle child SIGSTOPped, then 60 requests over
   ~30 s: failures, latency, time until the child is replaced.
4. kill_storm: 20 ``kill -9`` in 20 s on alternating slots; time from the
   last kill until ``/readyz`` answers 200, the first request succeeds and
   both children are ready; whether a breaker opened.
5. stalled_client: a client that reads the headers of a flood turn, then
   never reads again: the service's RSS (baseline, peak), time until the turn
   is gone and until the connection is cut; the service still answers.

Every wait is bounded; after each phase the service is stopped (SIGTERM) and
no process of the run may be left (checked through /proc).

The service runs with an empty ``HOME`` (``--keep-home``: the user's own),
so that nothing of this user's (shell start-up files that codex's shell
snapshot would run, codex's files under ``~``) enters the figures. The JSON
records the commit and the number of uncommitted files each phase ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio

from codex_bridge.codex_binary import PROJECT_ROOT, find_codex_binary
from fixtures.codex_home import write_codex_home
from fixtures.scripted_model import ScriptedModel, run_scripted_model

RESULTS_DIR = PROJECT_ROOT / "bench-results"
LOG_DIR = RESULTS_DIR / "adversarial-logs"
#: Set in the service's environment (and so its children's): finds leftovers.
RUN_MARK = "ADVERSARIAL_RUN_ID"
PLAIN = "[scenario:plain] hi"
CHAT_PATH = "/v1/chat/completions"
#: The service's default; phase 5 samples for this long plus 20 s.
CLIENT_STALL_TIMEOUT_S = 60.0
TCP_STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0B": "CLOSING",
}


# --- processes ------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def process_state(pid: int) -> str | None:
    """One-letter state of a process (T: stopped), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def marked_processes(run_id: str, tmp: Path) -> list[int]:
    """Processes of this run: the service (its environment carries the run's
    mark), and whatever names the run's directory in its environment (the
    children's CODEX_HOME), its command line or its working directory."""
    mark = f"{RUN_MARK}={run_id}".encode()
    where = str(tmp).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd").encode()
        except OSError:
            continue
        if (
            mark in environ.split(b"\0")
            or where in environ
            or where in cmdline
            or (cwd.startswith(where))
        ):
            found.append(int(entry))
    return found


def describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = "?"
    return f"{pid} [{process_state(pid)}] {cmdline[:100]}"


def signal_if_alive(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def short_reason(reason: object) -> object:
    """An exit reason without terminal colours, cut to a readable length."""
    if not isinstance(reason, str):
        return reason
    plain = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    return plain if len(plain) <= 160 else plain[:157] + "..."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_socket(port: int, peer_port: int) -> tuple[str, int] | None:
    """(state, bytes in the send queue) of the service's end of one connection."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port and (
                int(remote.rsplit(":", 1)[1], 16) == peer_port
            ):
                return TCP_STATES.get(state, state), int(queues.split(":")[0], 16)
    return None


# --- the service ----------------------------------------------------------------------------


@attrs.define
class Service:
    process: trio.Process
    port: int
    log_path: Path
    client: httpx.AsyncClient

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> float | None:
        return rss_mib(self.pid)

    async def pool(self) -> dict[str, Any]:
        response = await self.client.get("/admin/pool", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@attrs.define
class Run:
    """What every phase shares: the model, the binary, where files go."""

    model: ScriptedModel
    model_url: str
    codex_bin: Path
    tmp: Path
    run_id: str
    keep_home: bool = False
    results: dict[str, Any] = attrs.Factory(dict)
    table: list[tuple[str, str, str]] = attrs.Factory(list)

    def row(self, phase: str, measure: str, figure: object) -> None:
        self.table.append((phase, measure, str(figure)))


def summarize_log(path: Path) -> dict[str, Any]:
    """Counts by level, and each distinct warning/error (numbers blanked)."""
    levels: Counter[str] = Counter()
    distinct: Counter[str] = Counter()
    tracebacks = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        match = re.search(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b", line)
        if match is None:
            continue
        levels[match.group(1)] += 1
        if match.group(1) in ("WARNING", "ERROR", "CRITICAL"):
            message = line[match.start() :]
            distinct[re.sub(r"\d+(\.\d+)?", "N", message)[:200]] += 1
    return {
        "lines_by_level": dict(levels),
        "tracebacks": tracebacks,
        "distinct_messages": [
            {"count": count, "message": message} for message, count in distinct.most_common(15)
        ],
    }


@asynccontextmanager
async def service(run: Run, name: str, **env: str) -> AsyncIterator[Service]:
    """``codex-bridge serve`` for one phase; stopped and checked on the way out."""
    home = run.tmp / name / "home"
    extra = write_codex_home(home, run.model_url)
    user_home = run.tmp / name / "user-home"
    user_home.mkdir()
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CODEX_BRIDGE_")}
    full_env = {
        **base,
        **extra,
        RUN_MARK: run.run_id,
        **({} if run.keep_home else {"HOME": str(user_home)}),
        "CODEX_BRIDGE_PORT": str(port),
        "CODEX_BRIDGE_POOL_SIZE": "2",
        "CODEX_BRIDGE_CODEX_BIN": str(run.codex_bin),
        "CODEX_BRIDGE_CODEX_HOME": str(home),
        "CODEX_BRIDGE_WORKSPACE_DIR": str(run.tmp / name / "workspace"),
        "CODEX_BRIDGE_STATE_URL": f"sqlite:///{run.tmp / name / 'state.sqlite3'}",
        "CODEX_BRIDGE_LOG_LEVEL": "warning",
        **env,
    }
    log_path = run.tmp / name / "service.log"
    serve = [str(Path(sys.executable).parent / "codex-bridge"), "serve"]
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            serve, env=full_env, stdout=log, stderr=log, stdin=None
        )
    # No client timeout: every request is bounded by the phase's own deadline.
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None)
    svc = Service(process, port, log_path, client)
    stopped_cleanly = False
    try:
        with trio.fail_after(90):
            while True:
                try:
                    if (await svc.client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.returncode is not None:
                    raise RuntimeError(f"codex-bridge serve exited with {process.returncode}")
                await trio.sleep(0.05)
        # Both children up before anything is measured.
        with trio.fail_after(60):
            while True:
                if (await svc.pool())["ready"] == 2:
                    break
                await trio.sleep(0.05)
        yield svc
    finally:
        with trio.CancelScope(shield=True):
            await svc.client.aclose()
            started = time.monotonic()
            signal_if_alive(process.pid, signal.SIGTERM)
            with trio.move_on_after(45):
                await process.wait()
                stopped_cleanly = True
            if process.returncode is None:
                process.kill()
                await process.wait()
            stop_s = round(time.monotonic() - started, 2)
            left: list[int] = []
            with trio.move_on_after(10):
                while True:
                    left = marked_processes(run.run_id, run.tmp)
                    if not left:
                        break
                    await trio.sleep(0.1)
            leftovers = [describe(pid) for pid in left]
            for pid in left:
                signal_if_alive(pid, signal.SIGCONT)
                signal_if_alive(pid, signal.SIGKILL)
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, LOG_DIR / f"{name}.log")
            run.results.setdefault(name, {})["service"] = {
                "stopped_by_sigterm": stopped_cleanly,
                "exit_code": process.returncode,
                "stop_s": stop_s,
                "processes_left_behind": leftovers,
                "log": summarize_log(log_path),
            }


@attrs.define
class PoolWatch:
    """Samples /admin/pool and the service's RSS in the background."""

    svc: Service
    interval_s: float
    pids_by_slot: dict[int, list[int]] = attrs.Factory(dict)
    breaker_opened: list[dict[str, Any]] = attrs.Factory(list)
    peak_service_rss: float = 0.0
    peak_child_rss: float = 0.0
    samples: int = 0

    async def run(self) -> None:
        while True:
            try:
                pool = await self.svc.pool()
            except (httpx.HTTPError, ValueError):
                await trio.sleep(self.interval_s)
                continue
            self.samples += 1
            self.peak_service_rss = max(self.peak_service_rss, self.svc.rss() or 0.0)
            for child in pool["children"]:
                pids = self.pids_by_slot.setdefault(child["slot"], [])
                if child.get("pid") is not None and child["pid"] not in pids:
                    pids.append(child["pid"])
                self.peak_child_rss = max(self.peak_child_rss, child.get("rss_mib") or 0.0)
                if child.get("breaker") == "open":
                    self.breaker_opened.append(
                        {
                            "slot": child["slot"],
                            "last_exit_reason": short_reason(child["last_exit_reason"]),
                        }
                    )
            await trio.sleep(self.interval_s)

    def report(self) -> dict[str, Any]:
        return {
            "children_seen_per_slot": {slot: len(p) for slot, p in self.pids_by_slot.items()},
            "breaker_opened": bool(self.breaker_opened),
            "breaker_samples": self.breaker_opened[:5],
            "peak_service_rss_mib": self.peak_service_rss,
            "peak_child_rss_mib": self.peak_child_rss,
        }


@asynccontextmanager
async def watching(svc: Service, interval_s: float = 0.5) -> AsyncIterator[PoolWatch]:
    watch = PoolWatch(svc, interval_s)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        yield watch
        nursery.cancel_scope.cancel()


async def snapshot(svc: Service, turns: int, started: float) -> dict[str, Any]:
    pool = await svc.pool()
    return {
        "turns": turns,
        "elapsed_s": round(trio.current_time() - started, 1),
        "service_rss_mib": svc.rss(),
        "children": [
            {
                key: short_reason(child.get(key))
                for key in (
                    "slot",
                    "pid",
                    "state",
                    "rss_mib",
                    "restarts",
                    "last_exit_reason",
                    "turns_served",
                    "threads_owned",
                    "breaker",
                )
            }
            for child in pool["children"]
        ],
        "active_turns": pool["active_turns"],
        "queued": pool["queued"],
    }


def brief(snap: dict[str, Any]) -> str:
    children = ", ".join(
        f"{c['rss_mib']}" + (f" (restarts {c['restarts']})" if c["restarts"] else "")
        for c in snap["children"]
    )
    return f"service {snap['service_rss_mib']} MiB, children {children} MiB"


# --- requests -------------------------------------------------------------------------------


@attrs.define
class Outcome:
    status: int
    ok: bool
    content: str = ""
    error_code: str | None = None
    done: bool = False
    elapsed_s: float = 0.0
    deltas: int = 0

    @property
    def failure(self) -> str | None:
        if self.ok:
            return None
        if self.status != 200:
            return f"http {self.status} {self.error_code or ''}".strip()
        if self.error_code:
            return f"error chunk {self.error_code}"
        return "no [DONE]" if not self.done else "empty answer"


def chat_body(messages: list[dict[str, str]], *, stream: bool) -> dict[str, Any]:
    return {"model": "scripted-model", "stream": stream, "messages": messages}


def error_code_of(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") or error.get("type")
    return str(code) if code else None


async def chat(
    client: httpx.AsyncClient,
    messages: list[dict[str, str]],
    *,
    stream: bool,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    on_delta: Callable[[int], Awaitable[None]] | None = None,
) -> Outcome:
    """One chat completion; transport errors and timeouts are outcomes too."""
    start = trio.current_time()
    outcome = Outcome(status=0, ok=False)
    try:
        with trio.fail_after(timeout_s):
            if not stream:
                response = await client.post(
                    CHAT_PATH, json=chat_body(messages, stream=False), headers=headers
                )
                outcome.status = response.status_code
                if response.status_code == 200:
                    outcome.content = response.json()["choices"][0]["message"]["content"] or ""
                    outcome.done = True
                else:
                    outcome.error_code = error_code_of(response.content)
            else:
                async with client.stream(
                    "POST", CHAT_PATH, json=chat_body(messages, stream=True), headers=headers
                ) as response:
                    outcome.status = response.status_code
                    if response.status_code != 200:
                        outcome.error_code = error_code_of(await response.aread())
                    else:
                        await _read_stream(response, outcome, on_delta)
    except trio.TooSlowError:
        outcome.error_code = outcome.error_code or "client_timeout"
    except httpx.HTTPError as exc:
        outcome.error_code = outcome.error_code or f"transport: {type(exc).__name__}"
    outcome.elapsed_s = trio.current_time() - start
    outcome.ok = (
        outcome.status == 200 and outcome.done and not outcome.error_code and bool(outcome.content)
    )
    return outcome


async def _read_stream(
    response: httpx.Response,
    outcome: Outcome,
    on_delta: Callable[[int], Awaitable[None]] | None,
) -> None:
    parts: list[str] = []
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            outcome.done = True
            break
        event = orjson.loads(data)
        if event.get("error"):
            outcome.error_code = str(event["error"].get("code") or event["error"].get("type"))
        for choice in event.get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                parts.append(content)
                outcome.deltas += 1
                if on_delta is not None:
                    await on_delta(outcome.deltas)
    outcome.content = "".join(parts)


def forget_requests(model: ScriptedModel) -> None:
    """The scripted model keeps every request body; thousands of turns need not."""
    if len(model.requests) > 200:
        model.requests.clear()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


# --- phase 1: memory over many turns --------------------------------------------------------


@attrs.define
class Tally:
    done: int = 0
    failures: Counter[str] = attrs.Factory(Counter)
    latencies: list[float] = attrs.Factory(list)

    def add(self, outcome: Outcome) -> None:
        self.done += 1
        self.latencies.append(outcome.elapsed_s)
        if outcome.failure:
            self.failures[outcome.failure] += 1


async def one_off_turns(run: Run, svc: Service, count: int, tally: Tally, deadline: float) -> None:
    """``count`` one-off turns, 4 at a time, streaming and not in turn; none
    is started after ``deadline``."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and trio.current_time() < deadline:
            index = next_index
            next_index += 1
            outcome = await chat(
                svc.client, [{"role": "user", "content": PLAIN}], stream=index % 2 == 0
            )
            tally.add(outcome)
            forget_requests(run.model)
            if tally.done % 500 == 0:
                print(f"  ... {tally.done} one-off turns", flush=True)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)


async def conversation_rounds(
    run: Run,
    svc: Service,
    histories: list[list[dict[str, str]]],
    rounds: range,
    tally: Tally,
    deadline: float,
) -> None:
    """Each round, every conversation takes one turn (4 at a time); no turn
    is started after ``deadline``."""
    for round_index in rounds:
        pending = list(range(len(histories)))

        async def worker(round_index: int = round_index, pending: list[int] = pending) -> None:
            while pending and trio.current_time() < deadline:
                index = pending.pop(0)
                history = histories[index]
                history.append({"role": "user", "content": f"[scenario:plain] turn {round_index}"})
                outcome = await chat(
                    svc.client,
                    history,
                    stream=False,
                    headers={"X-Conversation-Id": f"adversarial-{run.run_id}-{index}"},
                )
                tally.add(outcome)
                # The answer the client saw joins its history; a failed turn
                # leaves its user message unanswered, as a chat client would.
                if outcome.ok:
                    history.append({"role": "assistant", "content": outcome.content})
                forget_requests(run.model)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(worker)


def tally_report(tally: Tally, wall_s: float) -> dict[str, Any]:
    return {
        "turns": tally.done,
        "failed": sum(tally.failures.values()),
        "failures": dict(tally.failures),
        "wall_s": round(wall_s, 1),
        "turns_per_s": round(tally.done / wall_s, 1) if wall_s else None,
        "latency_s_p50": percentile(tally.latencies, 0.5) if tally.latencies else None,
        "latency_s_p99": percentile(tally.latencies, 0.99) if tally.latencies else None,
        "latency_s_max": round(max(tally.latencies), 3) if tally.latencies else None,
    }


#: Phase 1's time budgets: the whole run stays under ~20 minutes even when
#: turns are slow; the figures then say how far the turns got.
ONE_OFF_BUDGET_S = 480.0
CONVERSATION_BUDGET_S = 360.0


async def phase_memory(run: Run, scale: float) -> None:
    name = "1_memory"
    result = run.results.setdefault(name, {})
    marks = [int(1_500 * scale), int(5_000 * scale)]
    async with service(run, name) as svc, watching(svc, 1.0) as watch:
        start = trio.current_time()
        deadline = start + ONE_OFF_BUDGET_S
        tally = Tally()
        snaps = [await snapshot(svc, 0, start)]
        print(f"  one-off turns: 0: {brief(snaps[0])}", flush=True)
        for mark in marks:
            await one_off_turns(run, svc, mark - tally.done, tally, deadline)
            snaps.append(await snapshot(svc, tally.done, start))
            print(f"  one-off turns: {tally.done}: {brief(snaps[-1])}", flush=True)
            if tally.done < mark:
                print(f"  one-off turns: {ONE_OFF_BUDGET_S:g} s budget spent", flush=True)
                break
        result["one_off"] = {
            "snapshots": snaps,
            "turns_planned": marks[-1],
            "budget_s": ONE_OFF_BUDGET_S,
            "budget_spent": tally.done < marks[-1],
            **tally_report(tally, trio.current_time() - start),
            "watch": watch.report(),
        }
    of = f" of {marks[-1]} (budget spent)" if result["one_off"]["budget_spent"] else ""
    run.row("1 memory", f"one-off turns: {tally.done}{of} in", f"{result['one_off']['wall_s']} s")
    run.row("1 memory", "one-off turns failed", result["one_off"]["failed"])
    for snap in snaps:
        run.row("1 memory", f"after {snap['turns']} one-off turns", brief(snap))

    name = "1_memory_conversations"
    result = run.results.setdefault(name, {})
    conversations, rounds = 50, max(2, int(30 * scale))
    histories: list[list[dict[str, str]]] = [[] for _ in range(conversations)]
    async with service(run, name) as svc, watching(svc, 1.0) as watch:
        start = trio.current_time()
        tally = Tally()
        snaps = [await snapshot(svc, 0, start)]
        print(f"  conversation turns: 0: {brief(snaps[0])}", flush=True)
        deadline = start + CONVERSATION_BUDGET_S
        half = rounds // 2
        for part in (range(half), range(half, rounds)):
            await conversation_rounds(run, svc, histories, part, tally, deadline)
            snaps.append(await snapshot(svc, tally.done, start))
            print(f"  conversation turns: {tally.done}: {brief(snaps[-1])}", flush=True)
            if trio.current_time() >= deadline:
                print(f"  conversations: {CONVERSATION_BUDGET_S:g} s budget spent", flush=True)
                break
        result.update(
            conversations=conversations,
            turns_each=rounds,
            budget_s=CONVERSATION_BUDGET_S,
            budget_spent=tally.done < conversations * rounds,
            snapshots=snaps,
            **tally_report(tally, trio.current_time() - start),
            watch=watch.report(),
        )
    of = f", {tally.done} done (budget spent)" if result["budget_spent"] else ""
    run.row(
        "1 memory",
        f"conversation turns ({conversations} x {rounds}{of}) in",
        f"{result['wall_s']} s",
    )
    run.row("1 memory", "conversation turns failed", result["failed"])
    for snap in snaps:
        run.row("1 memory", f"after {snap['turns']} conversation turns", brief(snap))


# --- phase 2: a stream on a stopped child ---------------------------------------------------


async def phase_stopped_stream(run: Run) -> None:
    name = "2_stopped_stream"
    result = run.results.setdefault(name, {})
    async with service(run, name) as svc, watching(svc, 0.5) as watch:
        stopped: dict[str, Any] = {}

        async def on_delta(count: int) -> None:
            if count != 5 or stopped:
                return
            pool = await svc.pool()
            busy = [c for c in pool["children"] if c.get("load")]
            child = busy[0]
            os.kill(child["pid"], signal.SIGSTOP)
            stopped.update(pid=child["pid"], slot=child["slot"], at=trio.current_time())

        start = trio.current_time()
        outcome = await chat(
            svc.client,
            [{"role": "user", "content": "[scenario:slow deltas=2000 delay_ms=50]"}],
            stream=True,
            timeout_s=150,
            on_delta=on_delta,
        )
        ended = trio.current_time()
        pid, slot, stopped_at = stopped["pid"], stopped["slot"], stopped["at"]
        still_stopped = process_state(pid) == "T"
        signal_if_alive(pid, signal.SIGCONT)
        # The slot's replacement: a new pid, ready.
        replaced_s = None
        with trio.move_on_after(60):
            while True:
                child = (await svc.pool())["children"][slot]
                if child.get("pid") not in (None, pid) and child["state"] in ("idle", "busy"):
                    replaced_s = round(trio.current_time() - stopped_at, 2)
                    break
                await trio.sleep(0.05)
        after = (await svc.pool())["children"][slot]
        result.update(
            stopped_pid=pid,
            stopped_after_deltas=5,
            stream_ended_s_after_sigstop=round(ended - stopped_at, 2),
            stream_total_s=round(ended - start, 2),
            deltas_received=outcome.deltas,
            error_code=outcome.error_code,
            got_done=outcome.done,
            http_status=outcome.status,
            child_still_stopped_at_stream_end=still_stopped,
            slot_replaced_s_after_sigstop=replaced_s,
            slot_after={
                k: short_reason(after.get(k))
                for k in ("pid", "state", "restarts", "last_exit_reason")
            },
            watch=watch.report(),
        )
    run.row(
        "2 stopped stream", "SIGSTOP -> stream ended", f"{result['stream_ended_s_after_sigstop']} s"
    )
    run.row(
        "2 stopped stream",
        "error code / [DONE]",
        f"{result['error_code']} / {'yes' if result['got_done'] else 'no'}",
    )
    run.row("2 stopped stream", "SIGSTOP -> slot's new child ready", f"{replaced_s} s")


# --- phase 3: an idle child stopped ---------------------------------------------------------


async def phase_stopped_idle_child(run: Run) -> None:
    name = "3_stopped_idle_child"
    result = run.results.setdefault(name, {})
    async with service(run, name) as svc, watching(svc, 0.5) as watch:
        child = (await svc.pool())["children"][0]
        pid, slot = child["pid"], child["slot"]
        os.kill(pid, signal.SIGSTOP)
        stopped_at = trio.current_time()
        tally = Tally()
        outcomes: list[tuple[float, Outcome]] = []
        replaced: dict[str, float] = {}
        limiter = trio.CapacityLimiter(4)

        async def one(index: int) -> None:
            async with limiter:
                sent = trio.current_time() - stopped_at
                outcome = await chat(
                    svc.client, [{"role": "user", "content": PLAIN}], stream=True, timeout_s=120
                )
            tally.add(outcome)
            outcomes.append((sent, outcome))

        async def watch_slot() -> None:
            while True:
                now = (await svc.pool())["children"][slot]
                elapsed = trio.current_time() - stopped_at
                if now.get("pid") not in (None, pid):
                    replaced.setdefault("new_pid_s", elapsed)
                    if now["state"] in ("idle", "busy"):
                        replaced["ready_s"] = elapsed
                        return
                await trio.sleep(0.05)

        with trio.move_on_after(150):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_slot)
                for index in range(60):
                    await trio.sleep_until(stopped_at + index * 0.5)
                    nursery.start_soon(one, index)
        all_done = trio.current_time() - stopped_at
        signal_if_alive(pid, signal.SIGCONT)
        timeline = sorted((round(sent, 1), round(o.elapsed_s, 2)) for sent, o in outcomes)
        result.update(
            stopped_pid=pid,
            requests=len(outcomes),
            failed=sum(tally.failures.values()),
            failures=dict(tally.failures),
            latency_s_p50=percentile(tally.latencies, 0.5) if tally.latencies else None,
            latency_s_max=round(max(tally.latencies), 2) if tally.latencies else None,
            requests_sent_at_s_took_s=timeline,
            all_answered_s=round(all_done, 1),
            new_pid_s_after_sigstop=round(replaced["new_pid_s"], 2) if replaced else None,
            replacement_ready_s_after_sigstop=(
                round(replaced["ready_s"], 2) if "ready_s" in replaced else None
            ),
            slot_after={
                k: short_reason(v)
                for k, v in (await svc.pool())["children"][slot].items()
                if k in ("pid", "state", "restarts", "last_exit_reason")
            },
            watch=watch.report(),
        )
    run.row(
        "3 stopped idle child", "requests failed", f"{result['failed']} of {result['requests']}"
    )
    run.row(
        "3 stopped idle child",
        "latency p50 / max",
        f"{result['latency_s_p50']} s / {result['latency_s_max']} s",
    )
    run.row(
        "3 stopped idle child",
        "SIGSTOP -> new pid / ready",
        f"{result['new_pid_s_after_sigstop']} s / {result['replacement_ready_s_after_sigstop']} s",
    )


# --- phase 4: kill storm --------------------------------------------------------------------


async def phase_kill_storm(run: Run) -> None:
    name = "4_kill_storm"
    result = run.results.setdefault(name, {})
    async with service(run, name) as svc, watching(svc, 0.1) as watch:
        # The same request on the warm pool first, to compare with.
        baseline: list[float] = []
        for _ in range(5):
            outcome = await chat(
                svc.client, [{"role": "user", "content": PLAIN}], stream=False, timeout_s=60
            )
            baseline.append(outcome.elapsed_s)
        kills: list[dict[str, Any]] = []
        killed: set[int] = set()
        begin = trio.current_time()
        last_kill = begin
        for index in range(20):
            await trio.sleep_until(begin + index)
            slot = index % 2
            child = (await svc.pool())["children"][slot]
            pid = child.get("pid")
            if pid is None or pid in killed:
                kills.append({"slot": slot, "skipped": f"no new child yet ({child['state']})"})
                continue
            if signal_if_alive(pid, signal.SIGKILL):
                last_kill = trio.current_time()
                killed.add(pid)
                kills.append({"slot": slot, "pid": pid, "state": child["state"]})
        times: dict[str, float] = {}
        attempts: Counter[str] = Counter()

        async def readyz() -> None:
            while True:
                if (await svc.client.get("/readyz")).status_code == 200:
                    break
                await trio.sleep(0.01)
            times["readyz_200_s"] = trio.current_time() - last_kill

        async def first_success() -> None:
            while True:
                outcome = await chat(
                    svc.client, [{"role": "user", "content": PLAIN}], stream=False, timeout_s=60
                )
                attempts[outcome.failure or "ok"] += 1
                if outcome.ok:
                    times["first_success_s"] = trio.current_time() - last_kill
                    times["first_success_request_took_s"] = outcome.elapsed_s
                    return
                await trio.sleep(0.01)

        async def both_ready() -> None:
            while True:
                pool = await svc.pool()
                states = [c["state"] for c in pool["children"]]
                if pool["ready"] == 2 and all(s in ("idle", "busy") for s in states):
                    times["both_ready_s"] = trio.current_time() - last_kill
                    return
                await trio.sleep(0.01)

        with trio.move_on_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(readyz)
                nursery.start_soon(first_success)
                nursery.start_soon(both_ready)
        final = (await svc.pool())["children"]
        result.update(
            warm_request_s_p50=round(sorted(baseline)[2], 3),
            kills_sent=len(killed),
            kills=kills,
            storm_s=round(last_kill - begin, 2),
            **{key: round(value, 3) for key, value in times.items()},
            request_attempts=dict(attempts),
            breaker_opened=bool(watch.breaker_opened),
            slots_after=[
                {k: c.get(k) for k in ("slot", "pid", "state", "restarts", "breaker")}
                | {"last_exit_reason": short_reason(c.get("last_exit_reason"))}
                for c in final
            ],
            watch=watch.report(),
        )
    run.row("4 kill storm", "kills sent", f"{len(killed)} in {result['storm_s']} s")
    for key, label in (
        ("readyz_200_s", "last kill -> /readyz 200"),
        ("first_success_s", "last kill -> first request ok"),
        ("first_success_request_took_s", "  (that request's own latency)"),
        ("warm_request_s_p50", "  (same request before the storm, p50)"),
        ("both_ready_s", "last kill -> both children ready"),
    ):
        run.row("4 kill storm", label, f"{result.get(key)} s")
    run.row("4 kill storm", "breaker opened", result["breaker_opened"])


# --- phase 5: a client that stops reading ---------------------------------------------------


async def phase_stalled_client(run: Run) -> None:
    name = "5_stalled_client"
    result = run.results.setdefault(name, {})
    flood = "[scenario:long deltas=400 size=50000]"
    async with service(run, name) as svc:
        await trio.sleep(1)
        baseline = svc.rss() or 0.0
        model_finished, model_cut = run.model.streams_finished, run.model.streams_cut_by_client
        body = orjson.dumps(chat_body([{"role": "user", "content": flood}], stream=True))
        request = (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{svc.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await sock.connect(("127.0.0.1", svc.port))
            peer_port = sock.getsockname()[1]
            await sock.send(request)
            head = b""
            with trio.fail_after(30):
                while b"\r\n\r\n" not in head:
                    chunk = await sock.recv(1024)
                    if not chunk:
                        break
                    head += chunk
            status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            print(f"  {status_line}; the client reads no more", flush=True)
            start = trio.current_time()
            samples: list[tuple[float, float]] = []
            turn_gone_s = connection_cut_s = None
            peak_send_queue = 0
            socket_states: list[tuple[float, str]] = []
            end = start + CLIENT_STALL_TIMEOUT_S + 20
            while trio.current_time() < end:
                elapsed = round(trio.current_time() - start, 2)
                samples.append((elapsed, svc.rss() or 0.0))
                if turn_gone_s is None:
                    pool = await svc.pool()
                    if pool["active_turns"] == 0:
                        turn_gone_s = elapsed
                server_end = server_socket(svc.port, peer_port)
                state = server_end[0] if server_end else "gone"
                if server_end:
                    peak_send_queue = max(peak_send_queue, server_end[1])
                if not socket_states or socket_states[-1][1] != state:
                    socket_states.append((elapsed, state))
                if connection_cut_s is None and state != "ESTABLISHED":
                    connection_cut_s = elapsed
                await trio.sleep(0.2)
            # What was waiting for the client, read now.
            drained = 0
            tail = b""
            how = "timeout"
            with trio.move_on_after(10):
                while True:
                    try:
                        chunk = await sock.recv(65536)
                    except OSError as exc:
                        how = f"error: {exc.strerror}"
                        break
                    if not chunk:
                        how = "eof"
                        break
                    drained += len(chunk)
                    tail = (tail + chunk)[-4096:]
        finally:
            sock.close()
        model_finished = run.model.streams_finished - model_finished
        model_cut = run.model.streams_cut_by_client - model_cut
        after = await chat(svc.client, [{"role": "user", "content": PLAIN}], stream=False)
        peak_at, peak = max(samples, key=lambda s: s[1])
        result.update(
            flood=flood,
            response_status_line=status_line,
            service_rss_mib_baseline=baseline,
            service_rss_mib_peak=peak,
            service_rss_mib_peak_at_s=peak_at,
            service_rss_mib_end=samples[-1][1],
            turn_gone_s=turn_gone_s,
            connection_cut_s=connection_cut_s,
            server_socket_states=socket_states,
            peak_server_send_queue_bytes=peak_send_queue,
            drained_bytes_after=drained,
            drained_end=how,
            tail_has_error_chunk=b'"error"' in tail,
            tail_error_code=(
                m.group(1).decode() if (m := re.search(rb'"code":"([a-z_]+)"', tail)) else None
            ),
            tail_has_done=b"[DONE]" in tail,
            model_streams_finished=model_finished,
            model_streams_cut_by_codex=model_cut,
            normal_request_after_ok=after.ok,
            rss_samples=samples[::5],
        )
    run.row(
        "5 stalled client",
        "service RSS baseline / peak / end",
        f"{baseline} / {peak} / {samples[-1][1]} MiB",
    )
    run.row("5 stalled client", "headers -> active_turns 0", f"{turn_gone_s} s")
    run.row("5 stalled client", "headers -> connection cut", f"{connection_cut_s} s")
    run.row("5 stalled client", "normal request afterwards ok", after.ok)


# --- the run --------------------------------------------------------------------------------

PHASES: dict[str, Callable[[Run, float], Awaitable[None]]] = {
    "1": phase_memory,
    "2": lambda run, scale: phase_stopped_stream(run),
    "3": lambda run, scale: phase_stopped_idle_child(run),
    "4": lambda run, scale: phase_kill_storm(run),
    "5": lambda run, scale: phase_stalled_client(run),
}


def code_version() -> dict[str, object]:
    """The commit the service runs, and how many files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        ).stdout

    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed_files": len(changed)}


def print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in [("phase", "measure", "figure"), *rows]) for i in range(3)]
    for row in [("phase", "measure", "figure"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


async def main(phases: list[str], scale: float, keep_home: bool) -> None:
    codex_bin = find_codex_binary(os.environ.get("CODEX_BRIDGE_CODEX_BIN"))
    began = time.monotonic()
    async with run_scripted_model() as model:
        with tempfile.TemporaryDirectory(prefix="adversarial-") as tmp:
            run = Run(
                model.model,
                model.base_url,
                Path(codex_bin),
                Path(tmp),
                uuid.uuid4().hex,
                keep_home=keep_home,
            )
            run.results.update(
                when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                machine={
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                scale=scale,
                service_home="this user's HOME" if keep_home else "an empty directory",
            )
            for phase in phases:
                print(f"phase {phase} ...", flush=True)
                phase_began = time.monotonic()
                load_before = os.getloadavg()[0]
                run.results.setdefault("code", {})[phase] = code_version()
                await PHASES[phase](run, scale)
                took = round(time.monotonic() - phase_began, 1)
                # The machine's load: other work on it shows in every latency.
                run.results.setdefault("load_average_1min", {})[phase] = {
                    "start": load_before,
                    "end": os.getloadavg()[0],
                }
                print(f"phase {phase}: {took} s", flush=True)
                run.table.append((f"{phase} (all)", "phase took", f"{took} s"))
            run.results["total_s"] = round(time.monotonic() - began, 1)
    left = [
        (name, entry["service"]["processes_left_behind"])
        for name, entry in run.results.items()
        if isinstance(entry, dict) and "service" in entry
    ]
    run.row("all", "processes left behind", sum(len(pids) for _, pids in left))
    run.row("all", "total", f"{run.results['total_s']} s")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "adversarial.json"
    out.write_text(json.dumps(run.results, indent=2) + "\n")
    print()
    print_table(run.table)
    print(f"\nwritten to {out}")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adversarial", description=__doc__)
    parser.add_argument(
        "--phases", default="1,2,3,4,5", help="comma-separated phases to run (default: all)"
    )
    parser.add_argument(
        "--keep-home",
        action="store_true",
        help="run the service with this user's HOME instead of an empty one",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply phase 1's turn counts (quick runs)"
    )
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {sorted(PHASES)}")
    trio.run(main, phases, args.scale, args.keep_home)


if __name__ == "__main__":
    cli()
