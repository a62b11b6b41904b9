"""Output parsers: the answer's text, as the decoder releases it, split into reasoning,
content and tool calls (`Chunk.thinking`, `Chunk.text`, `Chunk.tool_calls`).

Both are marker-delimited: thinking sits between a start and an end marker (`<think>` and
`</think>`), a tool call between its family's markers (`<tool_call>` and `</tool_call>`;
`[TOOL_CALLS]` runs to the end of the answer). A marker may arrive split over several
pieces of text, so text that could be the start of one is held back until it cannot be.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Any

from mlxollama.api import Chunk
from mlxollama.engine.decoder import OutputParser, TextParser, held_back


class Splitter:
    """Cuts a stream of text at a marker: `feed` returns (text before the marker, whether the
    marker was seen); what follows a seen marker stays in `rest`."""

    def __init__(self, marker: str):
        self.marker = marker
        self.pending = ""
        self.rest = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        i = self.pending.find(self.marker)
        if i >= 0:
            out, self.rest = self.pending[:i], self.pending[i + len(self.marker) :]
            self.pending = ""
            return out, True
        keep = held_back(self.pending, self.marker)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


HEADER_SLACK = 32
"""How much text (the role header, `<|start|>assistant`) may precede the answer's header."""


class ThinkingParser:
    """Reasoning between `start` and `end` becomes `Chunk.thinking`; the rest goes to
    `inner` (content, tool calls). Reasoning only comes first: a start marker after the
    answer began is content. Whitespace right after either marker is dropped (as Ollama's
    parser does), so neither the reasoning nor the answer begins with the newline the model
    writes after a tag.

    Args:
        start, end: the markers around the reasoning.
        inner: the parser of what follows the reasoning. Default: all content.
        opened: the prompt already opened the reasoning (the template ends with `start`).
        answer: what the model writes between its reasoning and its answer (harmony's
            `<|channel|>final<|message|>`, after a short role header), dropped; text that turns out
            not to be it is content. An answer that starts with it has no reasoning.
    """

    def __init__(
        self,
        start: str,
        end: str,
        inner: OutputParser | None = None,
        opened: bool = False,
        answer: str = "",
    ):
        self.inner = inner or TextParser()
        self.state = "thinking" if opened else "before"
        self.start, self.end = Splitter(start), Splitter(end)
        self.answer = answer
        self.header = ""  # text after the end marker that may be `answer`
        self.stripping = opened  # whitespace right after a marker is not part of anything

    def feed(self, text: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        while text:
            if self.stripping:
                text = text.lstrip()
                if not text:
                    return chunks
                self.stripping = False
            if self.state == "before":
                text = self._before(text)
            elif self.state == "thinking":
                thought, seen = self.end.feed(text)
                if thought:
                    chunks.append(Chunk(thinking=thought))
                if not seen:
                    return chunks
                self.state, text, self.stripping = "header", self.end.rest, True
            elif self.state == "header":
                text = self._header(text)
            else:
                return chunks + self.inner.feed(text)
        return chunks

    def _before(self, text: str) -> str:
        """Before anything but whitespace: a start marker, the answer's header, or content.
        Returns the text still to read (in the new state)."""
        pending = (self.start.pending + text).lstrip()
        self.start.pending = ""
        if not pending:
            return ""
        if self.answer and pending.startswith(self.answer):
            self.state, self.stripping = "content", True
            return pending[len(self.answer) :]
        before, seen = self.start.feed(pending)
        if seen and not before.strip():
            self.state, self.stripping = "thinking", True
            return self.start.rest
        if self.answer and self.answer.startswith(pending):
            self.start.pending = pending  # it may still be the answer's header
            return ""
        if seen or before or not self.start.pending:  # not a start marker: all content
            self.state = "content"
            return before + (self.start.marker + self.start.rest if seen else self.start.flush())
        return ""

    def _header(self, text: str) -> str:
        """After the reasoning: drop the answer's header if the model writes one (harmony's
        `<|start|>assistant` then `answer`); any other text is content."""
        if not self.answer:
            self.state = "content"
            return text
        self.header += text
        i = self.header.find(self.answer)
        if 0 <= i <= HEADER_SLACK:
            self.state, self.stripping = "content", True
            rest, self.header = self.header[i + len(self.answer) :], ""
            return rest
        special = self.header.startswith("<|") or "<|".startswith(self.header)
        if special and len(self.header) < len(self.answer) + HEADER_SLACK:
            return ""  # a special-token header, not complete yet
        self.state = "content"  # not the header: nothing is lost
        rest, self.header = self.header, ""
        return rest

    def close(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        if self.state == "thinking":
            thought = self.end.flush()
            if thought:
                chunks.append(Chunk(thinking=thought))
        elif self.state == "before" and self.start.pending:
            chunks += self.inner.feed(self.start.flush())
        elif self.state == "header" and self.header:
            chunks += self.inner.feed(self.header)
            self.header = ""
        return chunks + self.inner.close()


ParseCalls = Callable[[str], list[dict[str, Any]]]
"""The text of one tool-call section → Ollama tool calls (`{"function": {"name",
"arguments"}}`); raises ValueError when it is not a call."""


class ToolCallParser:
    """Text between `start` and `end` is parsed into `Chunk.tool_calls`; the rest is content.
    An empty `end` means the call runs to the end of the answer. A section that does not
    parse is given back as content, so nothing the model wrote is lost.
    """

    def __init__(self, start: str, end: str, parse: ParseCalls):
        self.start_marker, self.end_marker = start, end
        self.parse = parse
        self.start = Splitter(start)
        self.end = Splitter(end) if end else None
        self.inside = False
        self.body = ""
        self.index = 0  # calls emitted so far (`function.index`)

    def feed(self, text: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        while text:
            if not self.inside:
                before, seen = self.start.feed(text)
                if before:
                    chunks.append(Chunk(text=before))
                if not seen:
                    return chunks
                self.inside, text, self.body = True, self.start.rest, ""
                continue
            if self.end is None:
                self.body += text
                return chunks
            body, seen = self.end.feed(text)
            self.body += body
            if not seen:
                return chunks
            chunks += self._emit(self.start_marker + self.body + self.end_marker)
            self.inside, text = False, self.end.rest
        return chunks

    def close(self) -> list[Chunk]:
        if self.inside:
            tail = self.end.flush() if self.end is not None else ""
            self.body += tail
            self.inside = False
            return self._emit(self.start_marker + self.body)  # the end marker never came
        rest = self.start.flush()
        return [Chunk(text=rest)] if rest else []

    def _emit(self, raw: str) -> list[Chunk]:
        try:
            calls = self.parse(self.body)
        except (ValueError, TypeError, KeyError, AttributeError):
            return [Chunk(text=raw)]
        if not calls:
            return [Chunk(text=raw)]
        self.index = number_calls(calls, self.index)
        return [Chunk(tool_calls=calls)]


def call_id() -> str:
    """A tool call id as Ollama makes them: `call_` and 8 lower-case letters or digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


def number_calls(calls: list[dict[str, Any]], first: int) -> int:
    """Give each call Ollama's `id` (`call_...`) and `function.index` (its place among the
    answer's calls, from `first`); the next index."""
    for call in calls:
        call.setdefault("id", call_id())
        call["function"]["index"] = first
        first += 1
    return first


class LeadingCallParser:
    """An answer that is itself the tool call (Llama 3's bare JSON): when the answer begins
    with `start` (after white space and `<|python_tag|>`), all of it is held until it parses
    as calls or the answer ends; an answer that begins otherwise, or whose text does not
    parse into calls, is content, as Ollama treats it."""

    TAG = "<|python_tag|>"

    def __init__(self, start: str, parse: ParseCalls):
        self.start = start
        self.parse = parse
        self.state = "before"  # "before", "call" (holding), "content"
        self.held = ""
        self.index = 0

    def feed(self, text: str) -> list[Chunk]:
        if self.state == "content":
            return [Chunk(text=text)] if text else []
        self.held += text
        if self.state == "before":
            head = self.held.lstrip()
            if head.startswith(self.TAG):
                head = head[len(self.TAG) :].lstrip()
            elif self.TAG.startswith(head):
                return []  # white space, or a part of the tag: not known yet
            if not head:
                return []
            if not head.startswith(self.start):
                return self._content()
            self.state = "call"
        return []

    def close(self) -> list[Chunk]:
        if self.state != "call":
            return self._content() if self.held.strip() else []
        try:
            calls = self.parse(self.held)
        except (ValueError, TypeError, KeyError, AttributeError):
            calls = []
        if not calls:
            return self._content()
        self.index = number_calls(calls, self.index)
        self.held = ""
        return [Chunk(tool_calls=calls)]

    def _content(self) -> list[Chunk]:
        self.state, text, self.held = "content", self.held, ""
        return [Chunk(text=text)] if text else []
