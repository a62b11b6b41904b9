"""Ollama's chat-to-prompt rules (its `template.Execute`): a template that mentions
`.Messages` gets the whole (collated) conversation at once; an older template written with
`.System`/`.Prompt`/`.Response` is run once per turn and the last run stops right after
`{{ .Response }}`, so the model writes the answer. Messages and tools are shown as the Go
structs Ollama's templates expect (`.Role`, `.ToolCalls`, `.Function.Parameters`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from mlxollama.gotemplate.errors import fail
from mlxollama.gotemplate.executor import run
from mlxollama.gotemplate.nodes import Action, Branch, Field, Pipe
from mlxollama.gotemplate.template import Template, parse
from mlxollama.gotemplate.values import JSONList, JSONMap, Struct


def render_messages(
    template: str | Template,
    messages: Iterable[Mapping[str, Any] | Any],
    system: str | None = None,
    *,
    tools: list[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
) -> str:
    """Render a chat into a prompt with Ollama's rules.

    The system text, when given and the chat does not start with a system message, becomes
    the first message. Consecutive messages of one role are joined with a blank line (tool
    results excepted). A template that mentions `.Messages` then runs once, with `.System`
    being every system message joined. Otherwise the template runs once per user/assistant
    round with `.System`, `.Prompt` and `.Response` (a template that never mentions
    `.Response` gets `{{ .Response }}` appended); the last round stops right after
    `{{ .Response }}`, so a final assistant message is continued rather than closed.

    Args:
        template: Go template text, or a parsed Template.
        messages: dicts (or objects) with `role` and `content`, and optionally `thinking`,
            `images`, `tool_calls`, `tool_name`, `tool_call_id`.
        system: the model's SYSTEM. Default: None.
        tools: tool definitions in the API's JSON shape, shown as `.Tools`. Default: None.
        think: the request's `think` value (`.Think`, `.ThinkLevel`, `.IsThinkSet`).
            Default: None.

    Raises:
        InvalidModelfile: the template does not parse or fails to render.
    """
    tmpl = template if isinstance(template, Template) else parse(template)
    msgs = [_message_dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    joined_system, collated = _collate(msgs)
    think_values = {
        "Think": bool(think),
        # Ollama's ThinkValue.String(): a level as is, true is "medium", false is ""
        "ThinkLevel": think if isinstance(think, str) else ("medium" if think else ""),
        "IsThinkSet": think is not None,
    }
    if "messages" in tmpl.vars:
        return tmpl.render(
            {
                "System": joined_system,
                "Messages": [_go_message(m) for m in collated],
                "Tools": _go_tools(tools),
                "Response": "",
                **think_values,
            }
        )

    nodes = tmpl.nodes
    if "response" not in tmpl.vars:
        nodes = [*nodes, Action(Pipe([], False, [[Field(("Response",))]], 0), 0)]
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(run(nodes, {**turn, **think_values}))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m["role"], m["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(run(_cut_after_response(nodes, [False]), {**turn, **think_values}))
    return "".join(out)


def _mentions_response(p: Pipe) -> bool:
    for cmd in p.cmds:
        for a in cmd:
            if isinstance(a, Field) and "Response" in a.idents:
                return True
            if isinstance(a, Pipe) and _mentions_response(a):
                return True
    return False


def _cut_after_response(nodes: list[Any], cut: list[bool]) -> list[Any]:
    """Drop everything after the first action that prints `.Response` (Ollama's cut)."""
    kept = []
    for n in nodes:
        if cut[0]:
            continue
        if isinstance(n, Action):
            cut[0] = _mentions_response(n.pipe)
        elif isinstance(n, Branch):
            body = _cut_after_response(n.body, cut)
            rest = _cut_after_response(n.else_body, cut) if n.else_body is not None else None
            n = replace(n, body=body, else_body=rest)
        kept.append(n)
    return kept


def _message_dict(m: Any) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        m = m.to_dict() if hasattr(m, "to_dict") else vars(m)
    role = m.get("role")
    if not isinstance(role, str):
        raise fail(f"message role must be a string, not {role!r}")
    d = dict(m)
    d["role"] = role.lower()
    d["content"] = m.get("content") or ""
    return d


def _collate(msgs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system = [m["content"] for m in msgs if m["role"] == "system"]
    collated: list[dict[str, Any]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {
                **collated[-1],
                "content": collated[-1]["content"] + "\n\n" + m["content"],
            }
        else:
            collated.append(dict(m))
    return "\n\n".join(system), collated


def _go_message(m: Mapping[str, Any]) -> Struct:
    calls = []
    for tc in m.get("tool_calls") or []:
        fn = tc.get("function") or {}
        calls.append(
            Struct(
                {
                    "ID": tc.get("id", ""),
                    "Function": Struct(
                        {
                            "Index": fn.get("index", 0),
                            "Name": fn.get("name", ""),
                            "Arguments": JSONMap(fn.get("arguments") or {}),
                        },
                        fn,
                    ),
                },
                tc,
            )
        )
    fields = {
        "Role": m["role"],
        "Content": m["content"],
        "Thinking": m.get("thinking") or "",
        "Images": m.get("images") or [],
        "ToolCalls": calls,
        "ToolName": m.get("tool_name") or "",
        "ToolCallID": m.get("tool_call_id") or "",
    }
    return Struct(fields, fields)


def _go_property(p: Any) -> Any:
    if not isinstance(p, Mapping):
        return p
    types = p.get("type")
    fields = {
        "AnyOf": [_go_property(x) for x in p.get("anyOf") or []],
        "Type": [types] if isinstance(types, str) else list(types or []),
        "Items": p.get("items"),
        "Description": p.get("description", ""),
        "Enum": p.get("enum") or [],
        "Properties": JSONMap({k: _go_property(v) for k, v in (p.get("properties") or {}).items()}),
    }
    return Struct(fields, p)


def _go_tools(tools: list[Mapping[str, Any]] | None) -> JSONList | None:
    if not tools:
        return None
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        go_params = Struct(
            {
                "Type": params.get("type", ""),
                "Defs": params.get("$defs"),
                "Items": params.get("items"),
                "Required": params.get("required") or [],
                "Properties": JSONMap(
                    {k: _go_property(v) for k, v in (params.get("properties") or {}).items()}
                ),
            },
            params,
        )
        go_fn = Struct(
            {
                "Name": fn.get("name", ""),
                "Description": fn.get("description", ""),
                "Parameters": go_params,
            },
            fn,
        )
        out.append(
            Struct(
                {"Type": tool.get("type", ""), "Items": tool.get("items"), "Function": go_fn}, tool
            )
        )
    return JSONList(out, list(tools))
