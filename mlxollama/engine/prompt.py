"""Turn a chat or a prompt into token ids, with the model's template.

Precedence, as in Ollama: a request's `template` > the Modelfile's TEMPLATE (Go syntax) >
the model's own Jinja chat template > `{{ .Prompt }}`. The Modelfile's MESSAGEs come before
the request's messages, and its SYSTEM is used when the chat has no system message.
"""

from __future__ import annotations

from typing import Any

from mlxollama.api import Message

PLAIN_TEMPLATE = "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"


def chat_tokens(
    lm: Any,
    messages: list[Message],
    *,
    system: str | None = None,
    template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    think: bool | str | None = None,
) -> list[int]:
    """Render a chat with the model's template and tokenize it, ready for an answer.

    Args:
        lm: a LoadedModel (tokenizer, template, system, messages).
        messages: the request's messages, after the Modelfile's MESSAGEs.
        system: overrides the model's SYSTEM when the chat has no system message.
        template: a Go template overriding the model's.
        tools: tool definitions (OpenAI's and Ollama's shape), for templates that show them.
        think: the request's `think` (None: the template's default).
    """
    text = chat_text(lm, messages, system=system, template=template, tools=tools, think=think)
    return encode(lm, text, template)


def chat_text(
    lm: Any,
    messages: list[Message],
    *,
    system: str | None = None,
    template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    think: bool | str | None = None,
) -> str:
    """The prompt text `chat_tokens` tokenizes."""
    preamble = [Message.from_dict(d) for d in lm.messages]
    return _render(lm, preamble + list(messages), system, template, tools, think)


def generate_text(
    lm: Any,
    prompt: str,
    *,
    system: str | None = None,
    template: str | None = None,
    raw: bool = False,
    suffix: str = "",
    think: bool | str | None = None,
) -> str:
    """The prompt text for `/api/generate`: the prompt as one user turn, or as is with `raw`;
    with a `suffix`, the Go template's `.Prompt` and `.Suffix` (fill-in-the-middle)."""
    if raw:
        return prompt
    go = template or lm.template
    if suffix:
        from mlxollama import gotemplate

        return gotemplate.parse(go).render({"Prompt": prompt, "Suffix": suffix, "Response": ""})
    return _render(lm, [Message("user", prompt)], system, template, None, think)


def encode(
    lm: Any, text: str, template: str | None = None, *, raw: bool = False, suffix: str = ""
) -> list[int]:
    """A rendered prompt's token ids. A Jinja template writes the BOS itself, so its text is
    encoded without special tokens; a Go template (a `suffix` is always one) and a raw prompt
    leave the BOS to the tokenizer."""
    jinja = not raw and not suffix and uses_jinja(lm, template)
    return lm.tokenizer.encode(text, add_special_tokens=not jinja)


def uses_jinja(lm: Any, template: str | None = None) -> bool:
    """Whether the prompt is rendered by the model's Jinja chat template."""
    return (template or lm.template) is None and bool(getattr(lm.tokenizer, "chat_template", None))


def _render(
    lm: Any,
    messages: list[Message],
    system: str | None,
    template: str | None,
    tools: list[dict[str, Any]] | None,
    think: bool | str | None,
) -> str:
    msgs = [m.to_dict() for m in messages]
    default_system = system if system is not None else lm.system
    if default_system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": default_system})
    if uses_jinja(lm, template):
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = tools
        if think is not None:
            kwargs["enable_thinking"] = bool(think)
            if isinstance(think, str):
                kwargs["reasoning_effort"] = think
        return lm.tokenizer.apply_chat_template(
            [_jinja_message(m) for m in msgs],
            tokenize=False,
            add_generation_prompt=True,
            **kwargs,
        )
    from mlxollama import gotemplate

    return gotemplate.render_messages(
        template or lm.template or PLAIN_TEMPLATE, msgs, tools=tools or None, think=think
    )


def _jinja_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as Hugging Face chat templates read it: tool calls with `type`, a tool
    result with `name` and `tool_call_id`, reasoning as `reasoning_content` too."""
    out = dict(m)
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "id": c.get("id", ""), "function": c["function"]}
            for c in m["tool_calls"]
        ]
    if m.get("tool_name"):
        out["name"] = m["tool_name"]
    if m.get("thinking"):
        out["reasoning_content"] = m["thinking"]
    return out
