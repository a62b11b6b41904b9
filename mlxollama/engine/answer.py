"""One request on one loaded model, made ready to generate: the prompt rendered (tools,
thinking, fill-in-the-middle), the sampler and its constraint (a JSON schema, a forced tool
call), the output parser (reasoning, tool calls) and what the decoder needs.

The daemon's ModelActor and the embedded SDK both call `prepare`, so a request means the same
thing in both (`engine.features` checks it first, before any model loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxollama import api
from mlxollama.engine import grammar, prompt, thinking, tools
from mlxollama.engine.batch import Sequence, plan
from mlxollama.engine.decoder import Decoder, OutputParser, TextParser
from mlxollama.engine.features import capabilities, check
from mlxollama.engine.output import ThinkingParser
from mlxollama.errors import InvalidOption


def model_template(lm: Any, template: str | None = None) -> tuple[str | None, bool]:
    """The template text a request is rendered with, and whether it is a Go template."""
    go = template or lm.template
    if go is not None:
        return go, True
    return getattr(lm.tokenizer, "chat_template", None), False


@dataclass
class Prepared:
    """A request ready for the batch (`sequence`) and for its session (`decoder()`)."""

    sequence: Sequence
    stop: tuple[str, ...]
    parser: OutputParser
    tokenizer: Any

    def decoder(self, started_ns: int | None = None, load_ns: int = 0, cached: int = 0):
        """The sequence's Decoder; `cached` prompt tokens came from the prompt cache."""
        return Decoder(
            self.tokenizer,
            self.stop,
            prompt_count=len(self.sequence.prompt) - cached,
            cached=cached,
            started_ns=started_ns,
            load_ns=load_ns,
            parser=self.parser,
        )


def prepare(lm: Any, request: api.InferenceRequest, num_ctx: int) -> Prepared:
    """Render, constrain and plan `request` on loaded model `lm`.

    Raises:
        InvalidOption / UnsupportedModel: what the request asks cannot be done on this
            model (a schema feature, a tool choice, a template error).
    """
    opts = api.merge_options(lm.parameters, request.options)
    sampling = api.SamplingOptions.from_options(opts)
    template, go = model_template(lm, request.template)
    # what the model can do is its own template's, as the daemon checked before it loaded
    check(request, lm.name, capabilities(lm.capabilities, *model_template(lm)))
    offered = request.tools if request.tool_choice != "none" else []
    fmt = thinking.think_format(template, go) if not request.raw else None
    rule = _grammar(request, template, offered, lm.tokenizer)
    # a grammar binds the answer from its first token: there is no room to reason first, so
    # a thinking model is told not to (unless the request insists), and nothing is taken
    # for reasoning that the prompt opened
    constrained = rule is not None and fmt is not None and not fmt.answer
    think = thinking.effective_think(request.think, fmt, constrained=constrained)
    if request.kind == "chat":
        text = prompt.chat_text(
            lm, request.messages, template=request.template, tools=offered, think=think
        )
    else:
        text = prompt.generate_text(
            lm,
            request.prompt,
            system=request.system,
            template=request.template,
            raw=request.raw,
            suffix=request.suffix,
            think=think,
        )
    raw = request.kind == "generate" and request.raw
    tokens = prompt.encode(lm, text, request.template, raw=raw, suffix=request.suffix)

    processors = []
    if rule is not None:
        processors.append(grammar.constraint(lm, rule))
    seq = plan(tokens, sampling, num_ctx, opts["num_keep"], processors)
    seq.logprobs = request.top_logprobs if request.logprobs else None
    return Prepared(
        sequence=seq,
        stop=sampling.stop,
        parser=_parser(template, text, offered, fmt, think, constrained),
        tokenizer=lm.tokenizer,
    )


def _grammar(
    request: api.InferenceRequest, template: str | None, offered: list, tokenizer: Any = None
) -> str | None:
    """The grammar the answer must follow: a forced tool call, else the format's schema."""
    choice = request.tool_choice
    if offered and choice != "auto":
        fmt = tools.tool_format(template)
        if fmt is None:
            raise InvalidOption("tool_choice: this model's template has no tool-call format")
        name = choice.get("name") if isinstance(choice, dict) else None
        marker = tools.special_marker(tokenizer) if tokenizer is not None else tools.quoted
        return grammar.lark_grammar(tools.required_lark(fmt, offered, name, marker), "tool_choice")
    if request.format is not None:
        return grammar.json_grammar(request.format)
    return None


def _parser(
    template: str | None,
    text: str,
    offered: list,
    fmt: thinking.ThinkFormat | None,
    think: bool | str | None,
    constrained: bool = False,
) -> OutputParser:
    """Tool calls inside, reasoning around them: the reasoning is separated only when the
    request thinks (as in Ollama, `think: false` leaves whatever the model writes in the
    content); harmony's channels are always parsed, its markup is never content."""
    parser: OutputParser = TextParser()
    calls = tools.tool_format(template) if offered else None
    if calls is not None:
        parser = calls.parser(offered)
    if fmt is None or (think is False and not fmt.answer):
        return parser
    opened = text.rstrip().endswith(fmt.start) and not constrained
    return ThinkingParser(fmt.start, fmt.end, parser, opened=opened, answer=fmt.answer)
