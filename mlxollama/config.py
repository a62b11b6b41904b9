"""Settings from the environment: one documented table feeding one frozen dataclass.

Each `MLXOLLAMA_*` variable mirrors the `OLLAMA_*` variable of the same meaning. `docs/`
lists every entry of SETTINGS (a test checks it), and `mlxctl --help` prints the table.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435

SETTINGS = (
    Setting(
        "MLXOLLAMA_HOST",
        f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        "Address the daemon binds and clients call.",
    ),
    Setting("MLXOLLAMA_MODELS", "~/.mlxollama", "Store root: blobs, manifests, logs."),
    Setting(
        "MLXOLLAMA_KEEP_ALIVE",
        "5m",
        "How long an idle model stays loaded (seconds or a duration such as 10m; negative: "
        "forever; 0: unload when idle).",
    ),
    Setting(
        "MLXOLLAMA_MAX_LOADED_MODELS", "3", "Models loaded at once; the idle LRU one is evicted."
    ),
    Setting(
        "MLXOLLAMA_NUM_PARALLEL",
        "auto",
        "Requests each model generates at once (one batch); auto: from the memory budget, "
        "16 from 32 GiB, 8 from 8 GiB, 4 from 4 GiB, else 1.",
    ),
    Setting(
        "MLXOLLAMA_MAX_QUEUE",
        "512",
        "Requests that may wait per model, and model loads that may wait; beyond it: 503.",
    ),
    Setting("MLXOLLAMA_LOAD_TIMEOUT", "5m", "How long a model load may take before it fails."),
    Setting(
        "MLXOLLAMA_MAX_MEMORY",
        "auto",
        "Memory budget for loaded models (weights + KV cache estimate), e.g. 24GB; auto: 90% "
        "of the device's memory (the machine's RAM on CPU).",
    ),
    Setting(
        "MLXOLLAMA_WEIGHTS",
        "auto",
        "The form loaded weights are held in: stored (as stored), dense (dequantized: bf16 on "
        "a GPU, float32 on CPU), or auto: stored on Metal, float32 on CPU when it fits, bf16 "
        "on CUDA when the dense weights and KV cache fit MLXOLLAMA_MAX_MEMORY.",
    ),
    Setting(
        "MLXOLLAMA_WARMUP",
        "auto",
        "Run every batch size once after a load, before the first request (on: always; off: "
        "never; auto: on a GPU, where cold shapes compile kernels).",
    ),
    Setting(
        "MLXOLLAMA_PROMPT_CACHE",
        "1GB",
        "KV cache kept per loaded model for prompts that start the same way (a chat's earlier "
        "turns, a shared system prompt), counted in the memory budget; 0: off.",
    ),
    Setting(
        "MLXOLLAMA_PROMPT_CACHE_DISK",
        "4GB",
        "Disk kept per model for long prompts' KV caches (under the store's cache/prompts/), "
        "so they survive a restart; 0: off.",
    ),
    Setting(
        "MLXOLLAMA_KV_CACHE_TYPE",
        "f16",
        "KV cache type, as OLLAMA_KV_CACHE_TYPE: f16 (the model's own dtype, unquantized), "
        "q8_0 (8-bit, about half the memory) or q4_0 (4-bit, about a quarter); sliding-window "
        "layers stay unquantized.",
    ),
    Setting(
        "MLXOLLAMA_MAX_BODY",
        "64MB",
        "Largest JSON request body (blob uploads are not limited); larger gets 413.",
    ),
    Setting(
        "MLXOLLAMA_CONTEXT_LENGTH",
        "4096",
        "Default context length (num_ctx) when neither the request nor the model sets one; "
        "never more than the model's own.",
    ),
    Setting(
        "MLXOLLAMA_BLAS",
        "auto",
        "CPU backend only: a BLAS library to load before MLX (auto: the system's libblas.so.3 "
        "when it is OpenBLAS; off: never).",
    ),
    Setting(
        "MLXOLLAMA_REGISTRY_USERNAME",
        "",
        "User name for registries that ask for one on pull and push (HTTP Basic, also used "
        "to fetch a Bearer token).",
    ),
    Setting("MLXOLLAMA_REGISTRY_PASSWORD", "", "Password for MLXOLLAMA_REGISTRY_USERNAME."),
    Setting(
        "MLXOLLAMA_REGISTRY_TOKEN",
        "",
        "A Bearer token sent as is to registries, instead of a user name.",
    ),
    Setting(
        "MLXOLLAMA_REGISTRY_HOST",
        "",
        "The registry (host[:port]) the credentials above are for; unset: any OCI registry "
        "that asks for them, never Hugging Face (set hf.co here for a Hugging Face token, "
        "or use HF_TOKEN).",
    ),
    Setting(
        "MLXOLLAMA_HF_ENDPOINT",
        "",
        "Hugging Face endpoint for hf.co/ pulls, e.g. a mirror; unset: huggingface_hub's "
        "(HF_ENDPOINT, else https://huggingface.co).",
    ),
    Setting(
        "MLXOLLAMA_ORIGINS",
        "",
        "Extra browser origins allowed to call the daemon, comma-separated, * as a wildcard "
        "(e.g. https://app.example,chrome-extension://*); other origins get 403.",
    ),
    Setting(
        "MLXOLLAMA_API_KEY",
        "",
        "Key every request must send (Authorization: Bearer <key> or x-api-key); required "
        "to serve a non-loopback address.",
    ),
    Setting(
        "MLXOLLAMA_TRUST_NETWORK",
        "0",
        "1: serve a non-loopback address without MLXOLLAMA_API_KEY (everyone who can reach "
        "it may use the daemon).",
    ),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}

# MLXOLLAMA_KV_CACHE_TYPE's values: the bits a key or value element is stored in (None: the
# model's own dtype); `engine.kv_quant` maps them onto mlx-lm's quantized KV cache
KV_CACHE_BITS: dict[str, int | None] = {"f16": None, "q8_0": 8, "q4_0": 4}


@dataclass(frozen=True)
class Config:
    host: str
    models: Path
    keep_alive: float  # seconds; inf: forever
    max_loaded_models: int
    num_parallel: int
    max_queue: int
    load_timeout: float
    max_memory: int | None  # bytes; None: auto
    max_body: int
    context_length: int
    prompt_cache: int = 2**30  # bytes of KV cache kept per model for prompt reuse; 0: off
    prompt_cache_disk: int = 4 * 10**9  # bytes of it kept on disk per model; 0: off
    weights: str = "auto"  # auto | stored | dense (engine.weights)
    warmup: str = "auto"  # auto | on | off (engine.warmup)
    kv_cache_type: str = "f16"  # a key of KV_CACHE_BITS
    registry_username: str | None = None
    registry_password: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)
    registry_host: str | None = None
    hf_endpoint: str | None = None
    origins: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    trust_network: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        get = {s.name.removeprefix("MLXOLLAMA_"): _raw(s.name, env) for s in SETTINGS}
        memory = get["MAX_MEMORY"]
        return cls(
            host=get["HOST"],
            models=Path(get["MODELS"]).expanduser(),
            keep_alive=_seconds("KEEP_ALIVE", get["KEEP_ALIVE"]),
            max_loaded_models=_positive("MAX_LOADED_MODELS", get["MAX_LOADED_MODELS"]),
            num_parallel=_parallel(get["NUM_PARALLEL"], memory),
            max_queue=_positive("MAX_QUEUE", get["MAX_QUEUE"]),
            load_timeout=_seconds("LOAD_TIMEOUT", get["LOAD_TIMEOUT"]),
            max_memory=None if memory == "auto" else _bytes("MAX_MEMORY", memory),
            max_body=_bytes("MAX_BODY", get["MAX_BODY"]),
            prompt_cache=_bytes("PROMPT_CACHE", get["PROMPT_CACHE"]),
            prompt_cache_disk=_bytes("PROMPT_CACHE_DISK", get["PROMPT_CACHE_DISK"]),
            weights=_choice("WEIGHTS", get["WEIGHTS"], ("auto", "stored", "dense")),
            warmup=_choice("WARMUP", get["WARMUP"], ("auto", "on", "off")),
            kv_cache_type=_choice("KV_CACHE_TYPE", get["KV_CACHE_TYPE"], KV_CACHE_BITS),
            context_length=_positive("CONTEXT_LENGTH", get["CONTEXT_LENGTH"]),
            registry_username=get["REGISTRY_USERNAME"] or None,
            registry_password=get["REGISTRY_PASSWORD"] or None,
            registry_token=get["REGISTRY_TOKEN"] or None,
            registry_host=get["REGISTRY_HOST"] or None,
            hf_endpoint=_url("HF_ENDPOINT", get["HF_ENDPOINT"]) or None,
            origins=_list(get["ORIGINS"]),
            api_key=get["API_KEY"].strip() or None,
            trust_network=_flag("TRUST_NETWORK", get["TRUST_NETWORK"]),
        )

    @staticmethod
    def blas(env: dict[str, str] | None = None) -> str:
        """`MLXOLLAMA_BLAS` alone: `mlxollama.engine` reads it when it is imported, before
        MLX loads and before any other setting matters."""
        return _raw("MLXOLLAMA_BLAS", env)

    @staticmethod
    def client_env(env: dict[str, str] | None = None) -> tuple[str, str | None]:
        """What a client reads, `(MLXOLLAMA_HOST, MLXOLLAMA_API_KEY)`, with the defaults of
        `from_env`: a client must not fail on a daemon setting it does not use (a bad
        MLXOLLAMA_NUM_PARALLEL is the daemon's error, not `mlxctl list`'s)."""
        return _raw("MLXOLLAMA_HOST", env), _raw("MLXOLLAMA_API_KEY", env).strip() or None


def _raw(name: str, env: dict[str, str] | None) -> str:
    """A setting's text: the environment's value, or the table's default when unset or empty."""
    env = os.environ if env is None else env
    return env.get(name) or _DEFAULTS[name]


def _parallel(value: str, memory: str) -> int:
    """NUM_PARALLEL, or for `auto` a batch size the memory budget affords (MAX_MEMORY, else
    90% of RAM, read without importing MLX): a batch of 8 decodes 8 streams in one wave, where
    4 ran them in two and gave 0.64x mlx_lm.server's tok/s (docs/benchmarks.md); each slot
    reserves a full context's KV cache in the budget's estimate, so small budgets get fewer."""
    if value.strip().lower() != "auto":
        return _positive("NUM_PARALLEL", value)
    if memory == "auto":
        budget = 0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        budget = _bytes("MAX_MEMORY", memory)
    gib = budget / 2**30
    return 16 if gib >= 32 else 8 if gib >= 8 else 4 if gib >= 4 else 1


def _positive(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MLXOLLAMA_{name} must be a positive integer, got {value!r}")
    return n


def _seconds(name: str, value: str) -> float:
    """Seconds or a Go duration; the env var also accepts bare numbers, as Ollama's does."""
    from mlxollama.api import parse_keep_alive

    try:
        number = float(value)
    except ValueError:
        number = None
    try:
        return parse_keep_alive(value if number is None else number)
    except ValueError as e:
        raise ValueError(f"MLXOLLAMA_{name}: {e}") from None


def _list(value: str) -> tuple[str, ...]:
    """A comma-separated list, each item trimmed of spaces and quotes (as Ollama reads it)."""
    items = (item.strip().strip("\"'") for item in value.split(","))
    return tuple(item for item in items if item)


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"MLXOLLAMA_{name} must be 1 or 0 (true or false), got {value!r}")


def _choice(name: str, value: str, choices) -> str:
    text = value.strip().lower()
    if text not in choices:
        raise ValueError(f"MLXOLLAMA_{name} must be one of {', '.join(choices)}, got {value!r}")
    return text


def _url(name: str, value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"MLXOLLAMA_{name} must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def _bytes(name: str, value: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"MLXOLLAMA_{name} must be a size such as 24GB or 512MiB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Address:
    """`MLXOLLAMA_HOST` read: `host` is "" when the value names none (`:11435`), and an IPv6
    address is kept without its brackets."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        """Where a client calls: an empty host is this machine (127.0.0.1)."""
        host = self.host or DEFAULT_HOST
        url = f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"
        return f"{url}/{self.path}" if self.path else url

    @property
    def bind(self) -> tuple[str, int]:
        """Where the daemon listens: an empty host is every interface, as in Go's
        `net.Listen(":port")`."""
        return self.host or "0.0.0.0", self.port


def parse_host(value: str | None) -> Address:
    """`MLXOLLAMA_HOST` read the way Ollama reads OLLAMA_HOST, for the client and the daemon.

    Accepts `host`, `host:port`, `:port`, `[ipv6]:port`, a bare IPv6 address, and a scheme
    (`http://host:port`; with a scheme and no port, 80 for http and 443 for https). Spaces
    and quotes around the value are dropped; a path after the address is kept for clients
    (a daemon behind a proxy) and ignored by the daemon. Empty: `127.0.0.1:11435`.

    Raises:
        ValueError: an unknown scheme, an empty port (`host:`), or a port that is not a
            number from 0 to 65535.
    """
    text = (value or "").strip().strip("\"'") or f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    value = re.sub(r"//[^/@]*@", "//[redacted]@", str(value))  # errors show no credentials
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        port = {"http": 80, "https": 443}.get(scheme, 0)
        if not port:
            raise ValueError(f"MLXOLLAMA_HOST: unsupported scheme {scheme!r} in {value!r}")
    else:
        scheme, rest, port = "http", text, DEFAULT_PORT
    hostport, _, path = rest.partition("/")
    port_text: str | None = None
    if hostport.startswith("["):  # [ipv6] or [ipv6]:port
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"MLXOLLAMA_HOST: cannot read {value!r}: use host:port")
        port_text = after[1:] if after else None
    elif hostport.count(":") > 1:  # a bare IPv6 address, and nothing else with two colons
        host = hostport
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            raise ValueError(f"MLXOLLAMA_HOST: cannot read {value!r}: use host:port") from None
    else:
        host, colon, after = hostport.partition(":")
        port_text = after if colon else None
    if port_text is not None:
        if not port_text:
            raise ValueError(f"MLXOLLAMA_HOST: cannot read {value!r}: use host:port")
        if not re.fullmatch(r"[0-9]+", port_text):
            raise ValueError(f"MLXOLLAMA_HOST: invalid port {port_text!r} in {value!r}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"MLXOLLAMA_HOST: port {port} is out of range")
    return Address(scheme, host, port, path.strip("/"))


def settings_table() -> str:
    """The settings as aligned text, for `--help` epilogues."""
    width = max(len(s.name) for s in SETTINGS)
    return "\n".join(
        f"{s.name:<{width}}  {s.help} (default: {s.default or 'unset'})" for s in SETTINGS
    )
