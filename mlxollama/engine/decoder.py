"""The decoder: one per sequence, it turns generated token ids into answer chunks.

Both generation paths use it, the daemon's SessionActor and the embedded SDK's
`engine.generate.stream`, so their answers cannot drift: incremental detokenizing, stop
strings that never leak (text that may be a stop's prefix is held back), done reasons, and
Ollama's timings. No MLX here: it runs on whichever thread reads the tokens.

Hook points for what comes next:
- `parser`: reads the answer's text stream and makes the chunks (thinking, tool calls);
  the default, `TextParser`, passes the text through as `Chunk.text`.
- `logprob`: `add` takes one per token when the request asked for them (the token's
  log-probability and the top alternatives, from the model's side); they ride on the next
  chunk emitted (`Chunk.logprobs`, in Ollama's shape), None when nobody asked.
- The per-sequence logits processor (constrained decoding) runs on the model's side:
  `engine.batch.plan(..., logits_processors=...)`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mlxollama.api import Chunk, DoneReason

TokenLogprob = tuple[float, list[tuple[int, float]]]
"""A sampled token's log-probability and the top alternatives as (token id, logprob)."""


def logprob_entry(tokenizer: Any, token: int, logprob: TokenLogprob) -> dict[str, Any]:
    """Ollama's shape of one token's logprobs (its `api.Logprob`): `token` (the token's text),
    `logprob`, `bytes` (the token's bytes as integers) and, when alternatives were asked for,
    `top_logprobs` (the same fields, most likely first). Empty `bytes` and `top_logprobs` are
    left out, as Ollama's `omitempty` does."""
    value, top = logprob
    entry = _token_entry(tokenizer, token, value)
    if top:
        entry["top_logprobs"] = [_token_entry(tokenizer, t, lp) for t, lp in top]
    return entry


def _token_entry(tokenizer: Any, token: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token])
    raw = token_bytes(tokenizer, token, text)
    entry: dict[str, Any] = {"token": text, "logprob": logprob}
    if raw:
        entry["bytes"] = list(raw)
    return entry


def token_bytes(tokenizer: Any, token: int, text: str | None = None) -> bytes:
    """The bytes one token stands for. A token that is part of a UTF-8 character decodes to
    U+FFFD; its bytes are then read from the vocabulary (byte-level BPE pieces, SentencePiece
    `<0xNN>` byte tokens), so the bytes of consecutive tokens join into the text."""
    text = tokenizer.decode([token]) if text is None else text
    if "\ufffd" not in text:
        return text.encode()
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str):
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])
        decoder = _byte_decoder()
        if all(c in decoder for c in piece):
            return bytes(decoder[c] for c in piece)
    return text.encode()


_BYTE_DECODER: dict[str, int] = {}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character → byte: the printable bytes stand for
    themselves, the others are shifted to U+0100 and on, in byte order."""
    if not _BYTE_DECODER:
        printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
        shifted = 0
        for b in range(256):
            if b in printable:
                _BYTE_DECODER[chr(b)] = b
            else:
                _BYTE_DECODER[chr(256 + shifted)] = b
                shifted += 1
    return _BYTE_DECODER


def held_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class StopMatcher:
    """Holds back text that may be the start of a stop string.

    `feed` returns the text that is safe to emit and whether a stop string was reached; text
    from the stop string on is dropped. `matched` is the stop string reached (the earliest in
    the text), which Anthropic's `stop_sequence` names.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            out, self.pending = self.pending[:at], ""
            return out, True
        keep = max(held_back(self.pending, stop) for stop in self.stops)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class OutputParser(Protocol):
    """Turns the answer's text, as it becomes safe to emit, into chunks."""

    def feed(self, text: str) -> list[Chunk]: ...

    def close(self) -> list[Chunk]:
        """The chunks still held when the answer ends."""
        ...


class TextParser:
    """The default parser: all of the answer is content."""

    def feed(self, text: str) -> list[Chunk]:
        return [Chunk(text=text)] if text else []

    def close(self) -> list[Chunk]:
        return []


class Decoder:
    """One sequence's token ids → chunks, the last one with `done=True` and the metrics.

    Constructing it marks the sequence admitted: the prompt evaluation's clock starts.

    Args:
        tokenizer: the model's mlx-lm TokenizerWrapper (its detokenizer is copied).
        stop: stop strings.
        prompt_count: prompt tokens evaluated (after fitting the context, without those
            the prompt cache held).
        cached: prompt tokens the prompt cache held.
        started_ns: when the request began (`time.perf_counter_ns`), for total_duration.
            Default: now.
        load_ns: the model load this request waited for.
        parser: makes the chunks from the text. Default: `TextParser()`.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str] = (),
        *,
        prompt_count: int = 0,
        cached: int = 0,
        started_ns: int | None = None,
        load_ns: int = 0,
        parser: OutputParser | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ):
        self._clock = clock
        self._tokenizer = tokenizer
        self._detokenizer = copy.copy(tokenizer.detokenizer)
        self._detokenizer.reset()
        self._stops = StopMatcher(stop)
        self._parser = parser or TextParser()
        self._logprobs: list[dict[str, Any]] = []
        self.admitted_ns = clock()
        self.started_ns = self.admitted_ns if started_ns is None else started_ns
        self.first_ns: int | None = None
        self.final = Chunk(
            done=True,
            done_reason="length",
            prompt_eval_count=prompt_count,
            prompt_cached_count=cached,
            load_duration=load_ns,
        )
        self.done = False

    def add(
        self, token: int, finish: str | None = None, logprob: TokenLogprob | None = None
    ) -> list[Chunk]:
        """The chunks one generated token completes; once the answer ends (an end token,
        whose `finish` is "stop"; a stop string; any other `finish`, which is "length") the
        last of them is the final chunk and `done` is True."""
        if self.first_ns is None:
            self.first_ns = self._clock()
            self.final.prompt_eval_duration = self.first_ns - self.admitted_ns
        self.final.eval_count += 1
        if finish == "stop":  # an end-of-generation token: not part of the answer
            return self.end("stop")
        if logprob is not None:
            self._logprobs.append(logprob_entry(self._tokenizer, token, logprob))
        self._detokenizer.add_token(token)
        text, hit = self._stops.feed(self._detokenizer.last_segment)
        chunks = self._parse(text)
        if hit:  # what follows the stop string is dropped
            return chunks + self._finish("stop")
        if finish is not None:
            return chunks + self.end("length")
        return chunks

    def end(self, reason: DoneReason) -> list[Chunk]:
        """End the answer without another token (cancelled, no room, out of tokens): the
        text still held back, then the final chunk."""
        self._detokenizer.finalize()
        text, hit = self._stops.feed(self._detokenizer.last_segment)
        if hit:
            reason = "stop"
        else:
            text += self._stops.flush()
        return self._parse(text) + self._finish(reason)

    def _parse(self, text: str) -> list[Chunk]:
        chunks = self._parser.feed(text) if text else []
        if chunks and self._logprobs:
            chunks[0].logprobs, self._logprobs = self._logprobs, []
        return chunks

    def _finish(self, reason: DoneReason) -> list[Chunk]:
        chunks = self._parser.close()
        final = self.final
        if self._logprobs:
            (chunks[0] if chunks else final).logprobs = self._logprobs
        end = self._clock()
        final.done_reason = reason
        final.stop_sequence = self._stops.matched
        final.eval_duration = end - (self.first_ns or end)
        final.total_duration = end - self.started_ns
        self.done = True
        return [*chunks, final]
