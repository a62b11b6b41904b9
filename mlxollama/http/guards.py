"""Who may talk to the daemon: the Host of a loopback bind, the browser origins, the API key.

A browser is the one client that acts for someone else: any page it shows can send requests
to `127.0.0.1`. Three checks, in this order, keep those pages out (Ollama's rules, then
stricter ones):

1. **Host** (DNS rebinding): bound to a loopback address, the daemon answers only requests
   whose `Host` is a loopback name (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`, the
   bound address), on any port, or that carry no Host (HTTP/1.0). A page on
   `evil.example` whose DNS was repointed at 127.0.0.1 still sends `Host: evil.example`.
   Bound to another address with an API key, the Host is not restricted (the key protects
   it); without one (`MLXOLLAMA_TRUST_NETWORK`), a Host must be one that public DNS cannot
   answer for an attacker: an IP address, a single-label name (`gpu-box`) or a name under
   a private suffix (`.local`, `.lan`, `.internal`, `.home.arpa`, ...), besides the above.
2. **Origin** (CORS, CSRF): a request with an `Origin` is from a browser page. An allowed
   origin (`DEFAULT_ORIGINS` plus `MLXOLLAMA_ORIGINS`) gets `Access-Control-Allow-Origin`
   and its preflight is answered; any other origin is refused with 403, whatever the
   method or content type (gin-contrib/cors does the same for Ollama), so a "simple"
   `text/plain` POST cannot change the store. Requests without an Origin (the CLI, SDKs,
   curl) are not affected.
3. **API key** (`MLXOLLAMA_API_KEY`): when set, every route except the health check `/` needs
   `Authorization: Bearer <key>` or `x-api-key: <key>`, compared in constant time.
   Preflights need none: browsers send them without credentials.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable

import falcon

from mlxollama.config import Config, parse_host

# Ollama's built-in origins (envconfig.AllowedOrigins); `*` matches any run of characters
DEFAULT_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

# what browser SDKs send: OpenAI's and Anthropic's clients, plus every x-stainless-* header
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    "OpenAI-Beta",
    "OpenAI-Organization",
    "OpenAI-Project",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "x-api-key",
)
ALLOW_HEADER_PREFIX = "x-stainless-"
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
MAX_AGE = "43200"  # 12 h, gin-contrib/cors's default (browsers cap it lower)

# names no public DNS answers for, so no attacker's page can be rebound to them (RFC 6762,
# RFC 8375, ICANN's .internal, and what home routers hand out)
PRIVATE_SUFFIXES = ("local", "lan", "internal", "home.arpa", "home", "localdomain", "intranet")

HEALTH_PATHS = frozenset({"/"})  # answered without a key: it says only "Ollama is running"
SHOWN = 100  # characters of a refused Host or Origin repeated in the error


def bind_host(config: Config) -> str:
    """The host part of `MLXOLLAMA_HOST`, as the server binds it."""
    return parse_host(config.host).bind[0]


def is_loopback(host: str) -> bool:
    """True for `localhost`, `*.localhost` and loopback IP addresses (127/8, ::1)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name in a `Host` header without its port (`[::1]:80` -> `::1`); None if the
    header cannot be a host (a port that is not a number, a stray bracket)."""
    text = header.strip()
    if text.startswith("["):
        name, bracket, after = text[1:].partition("]")
        port = after[1:] if after.startswith(":") else after
        if not bracket or (after and not after.startswith(":")):
            return None
    elif text.count(":") > 1:  # a bare IPv6 address
        name, port = text, ""
    else:
        name, _, port = text.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".").lower()


def is_private_name(name: str) -> bool:
    """True for a name public DNS cannot resolve for someone else: an IP literal, a
    single-label name or one under `PRIVATE_SUFFIXES`."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return "." not in name or name.endswith(tuple("." + s for s in PRIVATE_SUFFIXES))


def origin_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A test for origins: each pattern matches whole origins, case-insensitively, with `*`
    standing for any run of characters (a lone `*` allows every origin)."""
    if "*" in patterns:
        return lambda origin: True
    parts = "|".join(".*".join(map(re.escape, p.lower().split("*"))) for p in patterns)
    regex = re.compile(f"(?:{parts})")
    return lambda origin: regex.fullmatch(origin.lower()) is not None


def _shown(value: str) -> str:
    return value if len(value) <= SHOWN else value[:SHOWN] + "..."


class Guards:
    """Falcon middleware: the Host, Origin and API-key checks of this module's docstring.

    Args:
        config: reads `host` (the bind address decides whether Host is checked),
            `origins` (extra allowed origins) and `api_key`.
    """

    def __init__(self, config: Config):
        bound = bind_host(config)
        self.loopback = is_loopback(bound)
        self.check_host = self.loopback or not config.api_key  # see the module docstring
        self.hosts = {bound.strip("[]").lower()}
        self.allowed_origin = origin_matcher(DEFAULT_ORIGINS + config.origins)
        self.key = config.api_key.encode() if config.api_key else None

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.append_header("Vary", "Origin")
        refused = self.refusal(req.method, req.path, req.get_header)
        if refused is not None:
            raise refused
        origin = req.get_header("Origin")
        if origin is None:
            return
        resp.set_header("Access-Control-Allow-Origin", origin)
        if _is_preflight(req.method, req.get_header):
            resp.set_header("Access-Control-Allow-Methods", ALLOW_METHODS)
            resp.set_header("Access-Control-Allow-Headers", _allow_headers(req))
            resp.set_header("Access-Control-Max-Age", MAX_AGE)
            resp.status = falcon.HTTP_204
            resp.complete = True

    def refusal(
        self, method: str, path: str, header: Callable[[str], str | None]
    ) -> falcon.HTTPError | None:
        """Why a request may not be served (403 or 401), from its method, path and headers
        alone; None: it may. The waitress layer asks this as soon as the headers are in, so
        a refused upload is never read; this middleware asks it again for other servers."""
        host = header("Host")
        if self.check_host and host is not None:
            name = host_name(host)
            if name is None or not self._allowed_host(name):
                return falcon.HTTPForbidden(title="403 Forbidden", description=self._why(host))
        origin = header("Origin")
        if origin is not None:
            if not self.allowed_origin(origin):
                return falcon.HTTPForbidden(
                    title="403 Forbidden",
                    description=f"origin {_shown(origin)!r} is not allowed: add it to "
                    "MLXOLLAMA_ORIGINS to let that page call the daemon",
                )
            if _is_preflight(method, header):
                return None  # browsers send preflights without credentials
        if self.key is None or (path in HEALTH_PATHS and method in ("GET", "HEAD")):
            return None
        if not any(hmac.compare_digest(given, self.key) for given in _presented(header)):
            return falcon.HTTPUnauthorized(
                title="401 Unauthorized",
                description="unauthorized: this daemon needs its API key (MLXOLLAMA_API_KEY) "
                "as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                headers={
                    "WWW-Authenticate": 'Bearer realm="mlxollama"',
                    # an allowed page may read why (it was let through the Origin check)
                    **({"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}),
                },
            )
        return None

    def _allowed_host(self, name: str) -> bool:
        if is_loopback(name) or name in self.hosts:
            return True
        return not self.loopback and is_private_name(name)

    def _why(self, host: str) -> str:
        if self.loopback:
            return (
                f"host {_shown(host)!r} is not allowed: a daemon bound to a loopback address "
                "answers only localhost, 127.0.0.1 and [::1] (a guard against DNS rebinding)"
            )
        return (
            f"host {_shown(host)!r} is not allowed: without MLXOLLAMA_API_KEY the daemon "
            "answers only IP addresses and local names (gpu-box, *.local, *.lan), a guard "
            "against DNS rebinding; set an API key to serve other names"
        )


def _is_preflight(method: str, header: Callable[[str], str | None]) -> bool:
    return method == "OPTIONS" and header("Access-Control-Request-Method") is not None


def _allow_headers(req: falcon.Request) -> str:
    """The fixed list, plus the x-stainless-* headers the preflight asks for."""
    asked = (req.get_header("Access-Control-Request-Headers") or "").split(",")
    extra = [h.strip() for h in asked if h.strip().lower().startswith(ALLOW_HEADER_PREFIX)]
    return ", ".join((*ALLOW_HEADERS, *extra))


def _presented(header: Callable[[str], str | None]) -> list[bytes]:
    """The keys a request offers: a Bearer token and an x-api-key header."""
    found = []
    scheme, _, token = (header("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        found.append(token.strip().encode())
    if api_key := header("x-api-key"):
        found.append(api_key.strip().encode())
    return found


def check_exposure(config: Config) -> None:
    """Refuse a bind that would serve the network with no key.

    Raises:
        ValueError: one line naming the address and the settings that allow it.
    """
    host = bind_host(config)
    if is_loopback(host) or config.api_key or config.trust_network:
        return
    raise ValueError(
        f"refusing to serve {host or 'every interface'!s} (MLXOLLAMA_HOST={config.host}) "
        "without an API key: set MLXOLLAMA_API_KEY, or MLXOLLAMA_TRUST_NETWORK=1 if everyone "
        "who can reach this address may use the daemon"
    )


def _host_rule(loopback: bool, keyed: bool) -> str:
    if loopback:
        return "loopback names"
    return "none (api key)" if keyed else "IP addresses and local names"


def exposure(config: Config) -> dict[str, object]:
    """What the daemon exposes, for its start-up line (never the key itself)."""
    host = bind_host(config)
    return {
        "reach": "this machine only" if is_loopback(host) else "the network",
        "auth": "api key required" if config.api_key else "none",
        "host_check": _host_rule(is_loopback(host), bool(config.api_key)),
        "origins": ["defaults", *config.origins],
    }
