"""The bench's HTTP client, in a process of its own (no GIL shared with the
server it measures): ``python -m bench.client SPEC_JSON`` runs one
measurement and prints its figures as one JSON object on stdout.

One asyncio event loop, one httpx client. Streams are split into frames on
their separator (``\\n\\n`` for SSE, ``\\n`` for NDJSON) and counted; a
frame carries deltas if it contains the door's marker, and its deltas are
counted by their text ("tok ", which appears nowhere else). Nothing is
parsed as JSON; a paced delta's text is its write time, read as a number.

Measurements (``SPEC["kind"]``): ``flood`` (deltas/s), ``paced`` (write →
read latency of stamped deltas), ``first_byte`` (sequential requests),
``hold`` (RSS of a process with many slowly streaming streams open),
``turns`` (RSS over a long run of short turns), ``conversation`` (first
byte of a conversation's turns, full history sent, against stateless
turns) and ``direct`` (the stand-in children's own stamped deltas, read
straight off their pipes).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = b"tok "


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float], unit: str = "ms") -> dict[str, Any]:
    return {
        "n": len(values),
        f"p50_{unit}": round(percentile(values, 0.5), 3),
        f"p99_{unit}": round(percentile(values, 0.99), 3),
        f"max_{unit}": round(max(values), 3),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (the service's guardians and, under
    them, its codex children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def process_rss(pid: int) -> dict[str, int]:
    """RSS in KiB of each process under ``pid``, by pid and what it runs."""
    rss: dict[str, int] = {}
    for child in descendants(pid):
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        name = "guardian" if any(a.endswith(b"guardian.py") for a in argv) else "child"
        rss[f"{name}:{child}"] = rss_kib(child)
    return rss


def stamps(frame: bytes, key: bytes) -> list[float]:
    """The write times in a delta frame's text (several if merged)."""
    start = frame.find(key)
    if start < 0:
        return []
    start += len(key)
    text = frame[start : frame.index(b'"', start)]
    return [float(word) for word in text.split()]


class Spec:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.raw = spec
        self.url: str = spec.get("url", "")
        self.path: str = spec.get("path", "/v1/chat/completions")
        self.sep: bytes = spec.get("sep", "\n\n").encode()
        self.marker: bytes = spec.get("marker", '"content":"').encode()
        self.key: bytes = spec.get("key", '"content":"').encode()
        self.body: dict[str, Any] = spec.get("body", {})

    def body_with(self, text: str) -> dict[str, Any]:
        """The door's body with its placeholder text replaced."""
        return dict(json.loads(json.dumps(self.body).replace("@TEXT@", text)))


async def _frames(
    client: httpx.AsyncClient, spec: Spec, text: str, on_frames: Any, headers: Any = None
) -> None:
    """Stream a request; ``on_frames(frames, now)`` for each chunk's whole frames."""
    tail = b""
    async with client.stream(
        "POST", spec.path, json=spec.body_with(text), headers=headers
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{spec.path}: {response.status_code} {await response.aread()!r}")
        async for chunk in response.aiter_raw():
            now = time.time()
            frames = (tail + chunk).split(spec.sep)
            tail = frames.pop()
            on_frames(frames, now)


async def flood(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    streams, deltas = spec.raw["streams"], spec.raw["deltas"]
    counts = {"deltas": 0, "frames": 0, "delta_frames": 0}
    marker = spec.marker

    def on_frames(frames: list[bytes], _now: float) -> None:
        counts["frames"] += len(frames)
        for frame in frames:
            if marker in frame:
                counts["delta_frames"] += 1
                counts["deltas"] += frame.count(TOKEN)

    start = time.perf_counter()
    await asyncio.gather(
        *(_frames(client, spec, f"flood {deltas}", on_frames) for _ in range(streams))
    )
    wall = time.perf_counter() - start
    if counts["deltas"] != streams * deltas:
        raise RuntimeError(f"lost deltas: {counts['deltas']} of {streams * deltas}")
    return {
        "streams": streams,
        **counts,
        "wall_s": round(wall, 3),
        "deltas_per_s": round(counts["deltas"] / wall),
    }


async def paced(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    streams, count, interval = spec.raw["streams"], spec.raw["count"], spec.raw["interval_ms"]
    lags: list[float] = []
    marker, key = spec.marker, spec.key

    def on_frames(frames: list[bytes], now: float) -> None:
        for frame in frames:
            if marker in frame:
                lags.extend((now - stamp) * 1000 for stamp in stamps(frame, key))

    start = time.perf_counter()
    await asyncio.gather(
        *(_frames(client, spec, f"tick {count} {interval}", on_frames) for _ in range(streams))
    )
    wall = time.perf_counter() - start
    if len(lags) != streams * count:
        raise RuntimeError(f"lost deltas: {len(lags)} of {streams * count}")
    return {
        "streams": streams,
        "per_stream_per_s": 1000 / interval,
        "deltas": len(lags),
        "wall_s": round(wall, 3),
        **summary(lags),
    }


async def _first_byte(
    client: httpx.AsyncClient, spec: Spec, text: str, headers: Any = None
) -> tuple[float, float]:
    """(first byte, first delta frame) in ms after the request is sent."""
    firsts: list[float] = []  # first byte, first delta

    def on_frames(frames: list[bytes], now: float) -> None:
        if not firsts:
            firsts.append(now)
        if len(firsts) == 1 and any(spec.marker in frame for frame in frames):
            firsts.append(now)

    start = time.time()
    await _frames(client, spec, text, on_frames, headers)
    if len(firsts) < 2:
        raise RuntimeError(f"{spec.path}: no delta")
    return (firsts[0] - start) * 1000, (firsts[1] - start) * 1000


async def first_byte(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    for _ in range(spec.raw["warmup"]):
        await _first_byte(client, spec, "instant")
    byte: list[float] = []
    delta: list[float] = []
    for _ in range(spec.raw["requests"]):
        b, d = await _first_byte(client, spec, "instant")
        byte.append(b)
        delta.append(d)
    return {"first_byte": summary(byte), "first_delta": summary(delta)}


async def conversation(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    """Turns of conversations (X-Conversation-Id, the whole history sent
    each time) and as many stateless turns, alternating; chat's body."""
    conversations, turns = spec.raw["conversations"], spec.raw["turns"]
    tag = spec.raw.get("tag", "c")
    stateful: dict[int, list[float]] = {}
    stateless: list[float] = []
    histories: dict[int, list[dict[str, str]]] = {c: [] for c in range(conversations)}
    for _ in range(spec.raw["warmup"]):
        await _first_byte(client, spec, "instant")
    for turn in range(turns):
        for c in range(conversations):
            history = histories[c]
            history.append({"role": "user", "content": "instant"})
            body = {"model": "bench", "stream": True, "messages": history}
            spec.body = body
            headers = {"X-Conversation-Id": f"bench-{tag}-{c}"}
            byte, _ = await _first_byte(client, spec, "instant", headers)
            stateful.setdefault(turn, []).append(byte)
            history.append({"role": "assistant", "content": "instant "})
            spec.body = {"model": "bench", "stream": True, "messages": [history[0]]}
            byte, _ = await _first_byte(client, spec, "instant")
            stateless.append(byte)
    every = [v for values in stateful.values() for v in values]
    return {
        "conversations": conversations,
        "turns_each": turns,
        "conversation_first_byte": summary(every),
        "conversation_first_byte_p50_by_turn_ms": [
            round(percentile(stateful[t], 0.5), 3) for t in range(turns)
        ],
        "stateless_first_byte": summary(stateless),
    }


async def hold(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    """``streams`` streams open and streaming slowly, opened in two halves:
    the process's RSS idle, with the first half open, and with all open.

    Two figures come of it. From idle to all open, per stream: what the
    issue first asked for, but it moves with what the warm-up left behind
    (memory freed then is reused by the first streams without growing the
    process). From half to all open, per stream: what each further stream
    adds once that slack is used up, the figure the goal is judged on.
    """
    pid, streams, interval = spec.raw["pid"], spec.raw["streams"], spec.raw["interval_ms"]
    half = streams // 2
    await asyncio.sleep(0.5)
    rss = [rss_kib(pid)]
    opened = 0
    enough = asyncio.Event()
    target = half
    done = asyncio.Event()
    marker = spec.marker

    async def one() -> None:
        nonlocal opened
        async with client.stream(
            "POST", spec.path, json=spec.body_with(f"tick 100000 {interval}")
        ) as response:
            seen = False
            async for chunk in response.aiter_raw():
                if not seen and marker + b"1" in chunk:
                    seen = True
                    opened += 1
                    if opened >= target:
                        enough.set()
                if done.is_set():
                    break

    tasks = [asyncio.create_task(one()) for _ in range(half)]
    await asyncio.wait_for(enough.wait(), 60)
    await asyncio.sleep(2)
    rss.append(rss_kib(pid))
    enough.clear()
    target = streams
    tasks += [asyncio.create_task(one()) for _ in range(streams - half)]
    await asyncio.wait_for(enough.wait(), 60)
    await asyncio.sleep(2)
    rss.append(rss_kib(pid))
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": streams,
        "interval_ms": interval,
        "rss_kib_idle": rss[0],
        "rss_kib_with_half": rss[1],
        "rss_kib_with_streams": rss[2],
        "kib_per_stream_from_idle": round((rss[2] - rss[0]) / streams, 1),
        "kib_per_stream": round((rss[2] - rss[1]) / (streams - half), 1),
    }


async def turns(client: httpx.AsyncClient, spec: Spec) -> dict[str, Any]:
    """Short turns, ``concurrency`` at a time; RSS at each checkpoint."""
    pid, total, concurrency = spec.raw["pid"], spec.raw["total"], spec.raw["concurrency"]
    checkpoints = sorted(spec.raw["checkpoints"])
    started = done = 0
    marks: list[dict[str, Any]] = []
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal started, done
        while started < total:
            started += 1
            await _first_byte(client, spec, "instant")
            done += 1
            if checkpoints and done >= checkpoints[0]:
                checkpoints.pop(0)
                marks.append(
                    {
                        "turns": done,
                        "elapsed_s": round(time.perf_counter() - start, 1),
                        "service_rss_kib": rss_kib(pid),
                        "children_rss_kib": process_rss(pid),
                    }
                )
                print(f"  {done} turns", file=sys.stderr, flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "turns": done,
        "concurrency": concurrency,
        "turns_per_s": round(done / wall),
        "checkpoints": marks,
    }


async def direct(spec: Spec) -> dict[str, Any]:
    """Stand-in children spawned here, spoken to in JSON-RPC, their stamped
    deltas read straight off their stdout: the floor of the paced latency."""
    children, per_child = spec.raw["children"], spec.raw["turns_per_child"]
    count, interval = spec.raw["count"], spec.raw["interval_ms"]
    key = b'"delta":"'
    lags: list[float] = []

    async def child() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            spec.raw["fake_codex"],
            "app-server",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        def send(id_: int, method: str, params: dict[str, Any]) -> None:
            stdin.write(
                json.dumps({"id": id_, "method": method, "params": params}).encode() + b"\n"
            )

        send(0, "initialize", {})
        await stdout.readline()
        threads = []
        for n in range(per_child):  # every thread first: no delta comes in between
            send(1 + n, "thread/start", {})
            threads.append(json.loads(await stdout.readline())["result"]["thread"]["id"])
        text = f"tick {count} {interval}"
        for n, thread in enumerate(threads):
            send(1000 + n, "turn/start", {"threadId": thread, "input": [{"text": text}]})
        ended = 0
        while ended < per_child:
            line = await stdout.readline()
            now = time.time()
            if b"item/agentMessage/delta" in line:
                lags.extend((now - stamp) * 1000 for stamp in stamps(line, key))
            elif b"turn/completed" in line:
                ended += 1
        stdin.close()
        await process.wait()

    await asyncio.gather(*(child() for _ in range(children)))
    if len(lags) != children * per_child * count:
        raise RuntimeError(f"lost deltas: {len(lags)} of {children * per_child * count}")
    return {"children": children, "streams": children * per_child, **summary(lags)}


KINDS = {
    "flood": flood,
    "paced": paced,
    "first_byte": first_byte,
    "conversation": conversation,
    "hold": hold,
    "turns": turns,
}


async def main(raw: dict[str, Any]) -> dict[str, Any]:
    spec = Spec(raw)
    if raw["kind"] == "direct":
        return await direct(spec)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=spec.url, timeout=120, limits=limits) as client:
        result: dict[str, Any] = await KINDS[raw["kind"]](client, spec)
        return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
