"""The prompt formats of the model families Ollama's library ships, rendered by our Go
template engine with Ollama's chat rules.

Each family's TEMPLATE is written here from the format its model card documents, in the
two styles Ollama's library uses: templates that range over `.Messages`, and legacy ones
that run once per round with `.System`, `.Prompt` and `.Response`. Every expected
rendering is written out by hand from the format's definition; the tokenizer adds BOS
(`<s>`, `<|begin_of_text|>`, ...), so no template prints it.
"""

from __future__ import annotations

import pytest

from mlxollama.gotemplate import render_messages

SYSTEM = "You are a terse pirate."
U1 = "Who are you?"
A1 = "Arr, a pirate."
U2 = "Where is the gold?"
PROMPT = "Why is the sea salty?"

CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": U1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": U2},
]

# Llama 2 chat: the system block opens the first [INST]; each answer closes with </s><s>.
LLAMA2 = """\
{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ if $system }}<<SYS>>
{{ $system }}
<</SYS>>

{{ $system = "" }}{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }} {{ .Content }} </s><s>
{{- end }}
{{- end }}"""

# Llama 3: a header per message, <|eot_id|> after each, an open assistant header last.
LLAMA3 = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}
{{- if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

# Mistral Instruct v0.3: no system role; the system text opens the last user message.
MISTRAL = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}[INST] {{ if and $last $.System }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}{{ if not $last }}</s>{{ end }}
{{- end }}
{{- end }}"""

# Gemma: user and model turns only; the system text opens the user turn (legacy style).
GEMMA = """\
<start_of_turn>user
{{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ .Response }}<end_of_turn>
"""

# ChatML (Qwen, SmolLM, Hermes, ...), over .Messages and in the legacy style.
CHATML = """\
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
CHATML_LEGACY = """\
{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""

# Stanford Alpaca: the system text, then ### Instruction / ### Response blocks.
ALPACA = """\
{{ if .System }}{{ .System }}

{{ end }}{{ if .Prompt }}### Instruction:
{{ .Prompt }}

{{ end }}### Response:
{{ .Response }}

"""

# Vicuna v1.1 (FastChat): "SYSTEM USER: ... ASSISTANT: ...</s>USER: ... ASSISTANT:".
VICUNA = """\
{{ if .System }}{{ .System }} {{ end }}{{ if .Prompt }}USER: {{ .Prompt }} {{ end }}\
ASSISTANT:{{ if .Response }} {{ .Response }}</s>{{ end }}"""

# Phi-3: <|role|> then the text and <|end|>, each on its own line.
PHI3 = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""

# Command R: turn tokens with a role token each; the chatbot turn is left open.
COMMAND_R = """\
{{- range .Messages }}<|START_OF_TURN_TOKEN|>
{{- if eq .Role "system" }}<|SYSTEM_TOKEN|>
{{- else if eq .Role "user" }}<|USER_TOKEN|>
{{- else }}<|CHATBOT_TOKEN|>
{{- end }}{{ .Content }}<|END_OF_TURN_TOKEN|>
{{- end }}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"""

# Zephyr: <|role|> lines closed by </s> (legacy style).
ZEPHYR = """\
{{ if .System }}<|system|>
{{ .System }}</s>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}</s>
{{ end }}<|assistant|>
{{ .Response }}</s>
"""

# Falcon Instruct: "System:", "User:" and "Falcon:" lines.
FALCON = """\
{{ if .System }}System: {{ .System }}
{{ end }}{{ if .Prompt }}User: {{ .Prompt }}
{{ end }}Falcon:{{ if .Response }} {{ .Response }}{{ end }}
"""

# OpenChat 3.5: "GPT4 Correct <Role>: ...<|end_of_turn|>".
OPENCHAT = """\
{{- range .Messages }}GPT4 Correct {{ if eq .Role "user" }}User
{{- else if eq .Role "assistant" }}Assistant{{ else }}System{{ end }}: {{ .Content }}<|end_of_turn|>
{{- end }}GPT4 Correct Assistant:"""

# DeepSeek V3 / R1: the system text first (.System: every system message), then the turns.
DEEPSEEK = """\
{{- .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>
{{- end }}
{{- end }}<｜Assistant｜>"""

# IBM Granite 3: role markers and <|end_of_text|> per message.
GRANITE = """\
{{- range .Messages }}<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}<|end_of_text|>
{{ end }}<|start_of_role|>assistant<|end_of_role|>"""

# family: (template, the chat CHAT rendered, PROMPT rendered with SYSTEM as for /api/generate)
FAMILIES = {
    "llama2": (
        LLAMA2,
        "[INST] <<SYS>>\nYou are a terse pirate.\n<</SYS>>\n\nWho are you? [/INST]"
        " Arr, a pirate. </s><s>[INST] Where is the gold? [/INST]",
        "[INST] <<SYS>>\nYou are a terse pirate.\n<</SYS>>\n\nWhy is the sea salty? [/INST]",
    ),
    "llama3": (
        LLAMA3,
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a terse pirate.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nArr, a pirate.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is the gold?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a terse pirate.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhy is the sea salty?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "mistral": (
        MISTRAL,
        "[INST] Who are you?[/INST] Arr, a pirate.</s>"
        "[INST] You are a terse pirate.\n\nWhere is the gold?[/INST]",
        "[INST] You are a terse pirate.\n\nWhy is the sea salty?[/INST]",
    ),
    "gemma": (
        GEMMA,
        "<start_of_turn>user\nYou are a terse pirate.\n\nWho are you?<end_of_turn>\n"
        "<start_of_turn>model\nArr, a pirate.<end_of_turn>\n"
        "<start_of_turn>user\nWhere is the gold?<end_of_turn>\n"
        "<start_of_turn>model\n",
        "<start_of_turn>user\nYou are a terse pirate.\n\nWhy is the sea salty?<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    "chatml": (
        CHATML,
        "<|im_start|>system\nYou are a terse pirate.<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\nArr, a pirate.<|im_end|>\n"
        "<|im_start|>user\nWhere is the gold?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a terse pirate.<|im_end|>\n"
        "<|im_start|>user\nWhy is the sea salty?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "chatml-legacy": (
        CHATML_LEGACY,
        "<|im_start|>system\nYou are a terse pirate.<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\nArr, a pirate.<|im_end|>\n"
        "<|im_start|>user\nWhere is the gold?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a terse pirate.<|im_end|>\n"
        "<|im_start|>user\nWhy is the sea salty?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "alpaca": (
        ALPACA,
        "You are a terse pirate.\n\n### Instruction:\nWho are you?\n\n"
        "### Response:\nArr, a pirate.\n\n"
        "### Instruction:\nWhere is the gold?\n\n### Response:\n",
        "You are a terse pirate.\n\n### Instruction:\nWhy is the sea salty?\n\n### Response:\n",
    ),
    "vicuna": (
        VICUNA,
        "You are a terse pirate. USER: Who are you? ASSISTANT: Arr, a pirate.</s>"
        "USER: Where is the gold? ASSISTANT:",
        "You are a terse pirate. USER: Why is the sea salty? ASSISTANT:",
    ),
    "phi3": (
        PHI3,
        "<|system|>\nYou are a terse pirate.<|end|>\n"
        "<|user|>\nWho are you?<|end|>\n"
        "<|assistant|>\nArr, a pirate.<|end|>\n"
        "<|user|>\nWhere is the gold?<|end|>\n"
        "<|assistant|>\n",
        "<|system|>\nYou are a terse pirate.<|end|>\n"
        "<|user|>\nWhy is the sea salty?<|end|>\n"
        "<|assistant|>\n",
    ),
    "command-r": (
        COMMAND_R,
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a terse pirate.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Who are you?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Arr, a pirate.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Where is the gold?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a terse pirate.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Why is the sea salty?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    "zephyr": (
        ZEPHYR,
        "<|system|>\nYou are a terse pirate.</s>\n"
        "<|user|>\nWho are you?</s>\n"
        "<|assistant|>\nArr, a pirate.</s>\n"
        "<|user|>\nWhere is the gold?</s>\n"
        "<|assistant|>\n",
        "<|system|>\nYou are a terse pirate.</s>\n<|user|>\nWhy is the sea salty?</s>\n"
        "<|assistant|>\n",
    ),
    "falcon": (
        FALCON,
        "System: You are a terse pirate.\nUser: Who are you?\nFalcon: Arr, a pirate.\n"
        "User: Where is the gold?\nFalcon:",
        "System: You are a terse pirate.\nUser: Why is the sea salty?\nFalcon:",
    ),
    "openchat": (
        OPENCHAT,
        "GPT4 Correct System: You are a terse pirate.<|end_of_turn|>"
        "GPT4 Correct User: Who are you?<|end_of_turn|>"
        "GPT4 Correct Assistant: Arr, a pirate.<|end_of_turn|>"
        "GPT4 Correct User: Where is the gold?<|end_of_turn|>"
        "GPT4 Correct Assistant:",
        "GPT4 Correct System: You are a terse pirate.<|end_of_turn|>"
        "GPT4 Correct User: Why is the sea salty?<|end_of_turn|>"
        "GPT4 Correct Assistant:",
    ),
    "deepseek": (
        DEEPSEEK,
        "You are a terse pirate.<｜User｜>Who are you?<｜Assistant｜>Arr, a pirate."
        "<｜end▁of▁sentence｜><｜User｜>Where is the gold?<｜Assistant｜>",
        "You are a terse pirate.<｜User｜>Why is the sea salty?<｜Assistant｜>",
    ),
    "granite": (
        GRANITE,
        "<|start_of_role|>system<|end_of_role|>You are a terse pirate.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>Who are you?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>Arr, a pirate.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>Where is the gold?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>",
        "<|start_of_role|>system<|end_of_role|>You are a terse pirate.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>Why is the sea salty?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>",
    ),
}


@pytest.mark.parametrize(
    ("template", "expected"), [(t, c) for t, c, _ in FAMILIES.values()], ids=list(FAMILIES)
)
def test_a_chat_renders_in_the_familys_format(template, expected):
    assert render_messages(template, CHAT) == expected


@pytest.mark.parametrize(
    ("template", "expected"), [(t, g) for t, _, g in FAMILIES.values()], ids=list(FAMILIES)
)
def test_a_generate_prompt_with_a_system_renders_in_the_familys_format(template, expected):
    # /api/generate: the prompt is the one user message, the system text comes first
    prompt = [{"role": "user", "content": PROMPT}]
    assert render_messages(template, prompt, system=SYSTEM) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            LLAMA3,
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a terse pirate.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nArr, a",
        ),
        (
            CHATML_LEGACY,
            "<|im_start|>system\nYou are a terse pirate.<|im_end|>\n"
            "<|im_start|>user\nWho are you?<|im_end|>\n"
            "<|im_start|>assistant\nArr, a",
        ),
        (
            VICUNA,
            "You are a terse pirate. USER: Who are you? ASSISTANT: Arr, a",
        ),
    ],
    ids=["llama3", "chatml-legacy", "vicuna"],
)
def test_a_last_assistant_message_is_continued_not_closed(template, expected):
    chat = [*CHAT[:2], {"role": "assistant", "content": "Arr, a"}]
    assert render_messages(template, chat) == expected
