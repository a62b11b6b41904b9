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
) -> list[int]:
    """Render a chat with the model's template and tokenize it, ready for an answer.

    Args:
        lm: a LoadedModel (tokenizer, template, system, messages).
        messages: the request's messages, after the Modelfile's MESSAGEs.
        system: overrides the model's SYSTEM when the chat has no system message.
        template: a Go template overriding the model's.
    """
    preamble = [Message.from_dict(d) for d in lm.messages]
    return _render(lm, preamble + list(messages), system, template)


def generate_tokens(
    lm: Any,
    prompt: str,
    *,
    system: str | None = None,
    template: str | None = None,
    raw: bool = False,
) -> list[int]:
    """The tokens for `/api/generate`: the prompt as one user turn, or as is with `raw`."""
    if raw:
        return lm.tokenizer.encode(prompt)
    return _render(lm, [Message("user", prompt)], system, template)


def _render(lm: Any, messages: list[Message], system: str | None, template: str | None):
    msgs = [m.to_dict() for m in messages]
    default_system = system if system is not None else lm.system
    if default_system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": default_system})
    go = template or lm.template
    if go is None and getattr(lm.tokenizer, "chat_template", None):
        text = lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return lm.tokenizer.encode(text, add_special_tokens=False)
    from mlxollama import gotemplate

    text = gotemplate.render_messages(go or PLAIN_TEMPLATE, msgs)
    return lm.tokenizer.encode(text)
