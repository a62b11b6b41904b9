"""Ollama's CLI formats: decimal sizes, humanized times, borderless tables, `--verbose` stats,
the `ps` columns and the `show` sections."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def human_bytes(n: int | float) -> str:
    """`4.7 GB`, `986 MB`, `12 GB`: decimal units; one decimal below 10 unless whole."""
    value, unit = float(n), "B"
    for next_unit in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, next_unit
    if unit == "B" or value >= 10:
        return f"{int(value)} {unit}"
    return f"{int(value)} {unit}" if value == int(value) else f"{value:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration, which Ollama's list and ps use."""
    s = int(seconds)
    if seconds < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = minutes // 60
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def human_time_ago(ts: float, now: float) -> str:
    return f"{human_duration(max(0.0, now - ts))} ago"


def parse_time(text: str) -> float | None:
    """Epoch seconds of an RFC3339 time (Go's nanosecond fractions included); None for Go's
    zero time."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not an RFC3339 time: {text!r}")
    if m.group(1).startswith("0001-01-01"):
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    stamp = datetime.fromisoformat(m.group(1) + zone).timestamp()
    return stamp + float(f"0.{m.group(2)}") if m.group(2) else stamp


def context(length: int | None, kv_cache_type: str | None = None) -> str:
    """The `ps` CONTEXT column: the context length, and the KV cache type when it is
    quantized (`4096 (q8_0)`), so the f16 default reads as Ollama's."""
    text = "" if length is None else str(length)
    if kv_cache_type and kv_cache_type != "f16":
        text = f"{text} ({kv_cache_type})"
    return text


def human_until(expires_at: str, now: float) -> str:
    """The `ps` UNTIL column: `4 minutes from now`, `Forever`, `Stopping...` or `Never`."""
    ts = parse_time(expires_at)
    if ts is None:
        return "Never"
    if ts <= now:
        return "Stopping..."
    if ts - now > 20 * 365 * 86400:
        return "Forever"
    return f"{human_duration(ts - now)} from now"


def processor(size: int, size_vram: int) -> str:
    """The `ps` PROCESSOR column: where the model's bytes are."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def show_text(body: dict[str, Any], verbose: bool = False) -> str:
    """`show`'s sections (Model, Capabilities, Parameters, System, License; verbose adds
    Metadata and Provenance) from an `/api/show` body."""
    info, details = body.get("model_info") or {}, body["details"]
    family = info.get("general.architecture", details.get("family", ""))
    model_rows = [
        ("architecture", family),
        ("parameters", details.get("parameter_size", "")),
        ("context length", str(info.get(f"{family}.context_length", ""))),
        ("embedding length", str(info.get(f"{family}.embedding_length", ""))),
        ("quantization", details.get("quantization_level", "")),
        ("stored as", str(info.get("mlxollama.quantization.stored", ""))),
    ]
    sections = [("Model", [r for r in model_rows if r[1]])]
    sections.append(("Capabilities", [(c, "") for c in body.get("capabilities") or []]))
    if body.get("parameters"):
        rows = [tuple(line.split(None, 1)) for line in body["parameters"].splitlines()]
        sections.append(("Parameters", [(r[0], r[-1] if len(r) > 1 else "") for r in rows]))
    for title, key in (("System", "system"), ("License", "license")):
        if body.get(key):
            sections.append((title, [(line, "") for line in body[key].splitlines()[:2]]))
    if verbose:
        sections.append(("Metadata", [(k, str(v)) for k, v in sorted(info.items())]))
        prov = body.get("provenance") or {}
        sections.append(("Provenance", [(k, str(v)) for k, v in sorted(prov.items()) if v]))
    out = []
    for title, rows in sections:
        out.append(f"  {title}")
        width = max((len(k) for k, v in rows if v), default=0)
        out += [f"    {k:<{width}}    {v}".rstrip() if v else f"    {k}" for k, v in rows]
        out.append("")
    return "\n".join(out)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """No borders, left aligned, four spaces between columns, no rule under the header."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = [
        "    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows
    ]
    return "\n".join(lines)


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() for the stats block: `1.234567s`, `12.3456ms`, `812µs`."""
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_trim(ns / 1e3)}µs"
    if ns < 1_000_000_000:
        return f"{_trim(ns / 1e6)}ms"
    s = ns / 1e9
    if s < 60:
        return f"{_trim(s)}s"
    minutes, sec = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)}m{_trim(sec)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes)}m{_trim(sec)}s"


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")


def stats(final: dict) -> str:
    """The block `run --verbose` prints after an answer (zero-valued lines omitted)."""
    lines = []

    def add(label: str, value: str) -> None:
        lines.append(f"{label + ':':<22}{value}")

    if final.get("total_duration"):
        add("total duration", go_duration(final["total_duration"]))
    if final.get("load_duration"):
        add("load duration", go_duration(final["load_duration"]))
    for prefix, count, duration in (
        ("prompt eval", "prompt_eval_count", "prompt_eval_duration"),
        ("eval", "eval_count", "eval_duration"),
    ):
        if final.get(count):
            add(f"{prefix} count", f"{final[count]} token(s)")
        if final.get(duration):
            add(f"{prefix} duration", go_duration(final[duration]))
            if final.get(count):
                add(f"{prefix} rate", f"{final[count] / (final[duration] / 1e9):.2f} tokens/s")
    return "\n".join(lines)
