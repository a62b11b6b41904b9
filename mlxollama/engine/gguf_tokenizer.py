"""Rebuild a Hugging Face tokenizer directory from the tokenizer metadata of a GGUF file.

A GGUF carries its tokenizer as `tokenizer.ggml.*` metadata, and llama.cpp turns that metadata
into a tokenizer of its own (`src/llama-vocab.cpp`). `tokenizer_files` writes the same tokenizer
as `tokenizer.json` and `tokenizer_config.json`, so that `mlx_lm.utils.load_tokenizer` (and
through it transformers' `AutoTokenizer`) encodes text exactly like llama.cpp's
`llama_tokenize(text, add_special=True, parse_special=True)`:

- `gpt2` (byte-level BPE): the pre-tokenizer regexes that llama.cpp picks for
  `tokenizer.ggml.pre` (`PRE_TOKENIZERS`) become a sequence of isolating `Split`s, followed by a
  byte-level mapping without a regex of its own; merges come from `tokenizer.ggml.merges`.
- `llama` (SentencePiece BPE, Llama 2 and Mistral v0.1): a BPE with byte fallback whose merges
  are derived from the token scores, as transformers' `LlamaConverter` does; spaces become `▁`,
  and with `tokenizer.ggml.add_space_prefix` each piece of text gets a leading `▁`. Gemma
  (1-3) uses this kind too, without the space prefix: its whitespace runs ("  " .. 31 spaces,
  newlines, tabs) are USER_DEFINED tokens of literal characters, matched whole below like any
  added token, as llama.cpp does (transformers renames them to `▁▁`.. and lets merges split
  them, which differs from llama.cpp on long runs).

Tokens of type CONTROL, USER_DEFINED and UNKNOWN become added tokens that match as a whole
anywhere in the text, as llama.cpp's special-token partition does with `parse_special=True`. BOS
and EOS are added by a template post-processor only when `tokenizer.ggml.add_bos_token` and
`tokenizer.ggml.add_eos_token` (or llama.cpp's default for the model) say so.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import structlog

from mlxollama.errors import UnsupportedModel

log = structlog.get_logger()

# llama.cpp's token types (`llama_token_type` in llama.h).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Token texts that llama.cpp turns into CONTROL tokens whatever their stored type (its EOG list).
_CONTROL_BY_TEXT = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    }
)
# Fill-in-the-middle token texts llama.cpp turns into CONTROL tokens when the GGUF has no id for
# them: metadata keys (first one found wins) -> texts.
_FIM_BY_TEXT = {
    ("fim_pre", "prefix"): (
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ),
    ("fim_suf", "suffix"): (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ),
    ("fim_mid", "middle"): (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ),
    ("fim_pad",): ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    ("fim_rep",): ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ("fim_sep",): ("<|file_sep|>",),
}
# gpt-oss: llama.cpp always renders these, as USER_DEFINED tokens.
_USER_DEFINED_BY_TEXT = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})

SPIECE_UNDERLINE = "▁"


class Pre(NamedTuple):
    """How llama.cpp pre-tokenizes for one `tokenizer.ggml.pre` value.

    Attributes:
        regexes: Patterns applied one after the other; each splits every piece the previous one
            left into its matches and the gaps between them (a `Split` with `isolated` behaviour).
        ignore_merges: A piece that is a whole vocabulary token is kept without merging.
        add_bos: Whether BOS is added when the GGUF has no `tokenizer.ggml.add_bos_token`.
    """

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


# The patterns below are llama.cpp's, as written in `llm_tokenizer_bpe` of `src/llama-vocab.cpp`.
# Where llama.cpp runs a hand-written matcher instead of its gpt2 and llama3 regexes, the pattern
# is the one that matcher implements (gpt2's ends in `|\s+`, which llama.cpp's string leaves out).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    + _CONTRACTIONS
    + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    + _CONTRACTIONS
    + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PORO = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

_DEFAULT = Pre((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2_PRE = Pre((_GPT2,))
_STARCODER = Pre((r"\p{N}", _GPT2))
_LLAMA3_PRE = Pre((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = Pre((_QWEN2,))

# `tokenizer.ggml.pre` -> how llama.cpp pre-tokenizes (its `llama_vocab::impl::load` switch).
PRE_TOKENIZERS: dict[str, Pre] = {
    "default": _DEFAULT,
    # LLAMA_VOCAB_PRE_TYPE_GPT2 and its aliases
    "gpt-2": _GPT2_PRE,
    "phi-2": _GPT2_PRE,
    "mpt": _GPT2_PRE,
    "olmo": _GPT2_PRE,
    "jais": _GPT2_PRE,
    "trillion": _GPT2_PRE,
    "granite-docling": _GPT2_PRE,
    "exaone4": _GPT2_PRE,
    "gigachat": _GPT2_PRE,
    "a.x-4.0": _GPT2_PRE,
    "mellum": _GPT2_PRE,
    "modern-bert": _GPT2_PRE,
    "jina-es": _GPT2_PRE,
    "jina-de": _GPT2_PRE,
    "jina-v2-es": _GPT2_PRE,
    "jina-v2-de": _GPT2_PRE,
    # LLAMA_VOCAB_PRE_TYPE_LLAMA3 (and DBRX/SMAUG, the same regex without ignore_merges)
    "llama3": _LLAMA3_PRE,
    "llama-v3": _LLAMA3_PRE,
    "llama-bpe": _LLAMA3_PRE,
    "falcon3": _LLAMA3_PRE,
    "falcon-h1": _LLAMA3_PRE,
    "pixtral": _LLAMA3_PRE,
    "midm-2.0": _LLAMA3_PRE,
    "lfm2": _LLAMA3_PRE,
    "jina-v5-nano": _LLAMA3_PRE,
    "dbrx": Pre((_LLAMA3,)),
    "smaug-bpe": Pre((_LLAMA3,)),
    # LLAMA_VOCAB_PRE_TYPE_QWEN2 and the pre types sharing its regex
    "qwen2": _QWEN2_PRE,
    "deepseek-r1-qwen": _QWEN2_PRE,
    "kormo": _QWEN2_PRE,
    "f2llmv2": _QWEN2_PRE,
    "megrez": _QWEN2_PRE,
    "stablelm2": _QWEN2_PRE,
    "hunyuan": _QWEN2_PRE,
    "solar-open": _QWEN2_PRE,
    "qwen35": Pre((_QWEN35,)),
    # LLAMA_VOCAB_PRE_TYPE_STARCODER and the pre types sharing its regexes
    "starcoder": _STARCODER,
    "smollm": _STARCODER,
    "refact": _STARCODER,
    "command-r": _STARCODER,
    "codeshell": _STARCODER,
    "exaone": _STARCODER,
    "minerva-7b": _STARCODER,
    "mellum2": _STARCODER,
    "falcon": Pre(
        (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    ),
    "deepseek-llm": Pre(
        (
            "[\r\n]",
            "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            "\\s+$",
            "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
            "\\p{N}+",
        ),
    ),
    "deepseek-coder": Pre(
        (
            "[\r\n]",
            "\\s?\\p{L}+",
            "\\s?\\p{P}+",
            "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
            "\\p{N}",
        ),
    ),
    "gpt-4o": Pre((_GPT4O,)),
    "llama4": Pre((_GPT4O,)),
    "kanana2": Pre((_GPT4O,)),
    "talkie": Pre((_GPT4O,)),
    "tekken": Pre((_TEKKEN,), ignore_merges=True, add_bos=True),
    "poro-chat": Pre((_PORO,)),
    "bloom": Pre((_PORO,)),
    "gpt3-finnish": Pre((_PORO,)),
    "viking": Pre((_PORO, r"\p{N}")),
}

# `tokenizer.ggml.model` values this module rebuilds.
_MODELS = ("gpt2", "llama")


def end_of_generation_ids(meta: dict) -> list[int]:
    """The ids that end an answer, as llama.cpp decides them: the EOS, EOT and EOM ids the
    metadata names, plus every token whose text llama.cpp treats as end-of-generation (so
    SmolLM2 stops at `<|endoftext|>` as well as at `<|im_end|>`)."""
    ids = {
        int(_scalar(meta, f"tokenizer.ggml.{key}_token_id", -1)) for key in ("eos", "eot", "eom")
    }
    tokens = _list(meta, "tokenizer.ggml.tokens")
    ids |= {i for i, text in enumerate(tokens) if text in _CONTROL_BY_TEXT}
    return sorted(i for i in ids if 0 <= i < len(tokens))


def tokenizer_files(meta: dict) -> dict[str, bytes]:
    """Build the files of a Hugging Face tokenizer directory from GGUF metadata.

    Args:
        meta: The metadata of a GGUF file as `mx.load(path, return_metadata=True)[1]` returns
            it: strings as `str`, string arrays as lists, numbers and bools as 0-d `mx.array`s,
            number arrays as `mx.array`s (plain Python values work too).

    Returns:
        File name -> content: `tokenizer.json`, `tokenizer_config.json` and
        `special_tokens_map.json`, ready to be written into one directory that
        `mlx_lm.utils.load_tokenizer` loads.

    Raises:
        UnsupportedModel: The tokenizer model is neither `gpt2` nor `llama`, or the metadata
            lacks the token list (or the merges of a `gpt2` tokenizer).
    """
    model = meta.get("tokenizer.ggml.model")
    if model not in _MODELS:
        raise UnsupportedModel(
            f"GGUF tokenizer model {model!r} is not supported"
            " (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
        )
    tokens = _list(meta, "tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModel("GGUF metadata has no tokenizer.ggml.tokens")
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    types = _list(meta, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)

    if model == "gpt2":
        tok, add_bos, add_eos = _bpe(meta, tokens)
        defaults = {}
    else:
        tok, add_bos, add_eos = _spm(meta, tokens)
        defaults = {"bos": 1, "eos": 2, "unknown": 0}  # llama.cpp's SPM defaults
    add_bos = bool(_scalar(meta, "tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(_scalar(meta, "tokenizer.ggml.add_eos_token", add_eos))

    def special(key: str) -> str | None:
        i = _scalar(meta, f"tokenizer.ggml.{key}_token_id", defaults.get(key))
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos, unk, pad = special("bos"), special("eos"), special("unknown"), special("padding")
    if add_bos and bos is None:
        log.warning("gguf_tokenizer.no_bos", detail="add_bos_token is set but no BOS token id")
        add_bos = False
    if add_eos and eos is None:
        log.warning("gguf_tokenizer.no_eos", detail="add_eos_token is set but no EOS token id")
        add_eos = False

    tok["added_tokens"] = _added_tokens(tokens, types, meta)
    tok["post_processor"] = _post_processor(
        tokens, bos if add_bos else None, eos if add_eos else None
    )
    if model == "llama" and tok["model"]["unk_token"] is None and unk is not None:
        tok["model"]["unk_token"] = unk

    arch = meta.get("general.architecture")
    ctx = _scalar(meta, f"{arch}.context_length", None) if arch else None
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(ctx) if ctx else 1_000_000_000,
    }
    special_map = {}
    for name, value in (("bos", bos), ("eos", eos), ("unk", unk), ("pad", pad)):
        if value is not None:
            config[f"{name}_token"] = value
            special_map[f"{name}_token"] = value
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template

    return {
        "tokenizer.json": _dumps(tok, indent=None),
        "tokenizer_config.json": _dumps(config),
        "special_tokens_map.json": _dumps(special_map),
    }


def _bpe(meta: dict, tokens: list[str]) -> tuple[dict, bool, bool]:
    """tokenizer.json body for `gpt2`; llama.cpp's BOS/EOS defaults for its pre type."""
    merges = _list(meta, "tokenizer.ggml.merges")
    if not merges:
        raise UnsupportedModel("GGUF gpt2 tokenizer has no tokenizer.ggml.merges")
    name = meta.get("tokenizer.ggml.pre")
    if not name:
        log.warning(
            "gguf_tokenizer.no_pre",
            detail="tokenizer.ggml.pre is missing; using llama.cpp's 'default' pre-tokenizer",
        )
        name = "default"
    pre = PRE_TOKENIZERS.get(name)
    if pre is None:
        log.warning(
            "gguf_tokenizer.unknown_pre",
            pre=name,
            detail="unknown tokenizer.ggml.pre; falling back to the gpt2 pre-tokenizer regex",
        )
        pre = _GPT2_PRE
    splits = [
        {
            "type": "Split",
            "pattern": {"Regex": regex},
            "behavior": "Isolated",
            "invert": False,
        }
        for regex in pre.regexes
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    body = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*splits, byte_level]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre.ignore_merges,
            "vocab": _vocab(tokens),
            "merges": _bpe_merges(merges, tokens),
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
    }
    return body, pre.add_bos, False


def _spm(meta: dict, tokens: list[str]) -> tuple[dict, bool, bool]:
    """tokenizer.json body for `llama` (SentencePiece BPE); llama.cpp adds BOS, not EOS."""
    scores = _list(meta, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    add_prefix = bool(_scalar(meta, "tokenizer.ggml.add_space_prefix", True))
    normalizers: list[dict] = []
    if add_prefix:
        normalizers.append({"type": "Prepend", "prepend": SPIECE_UNDERLINE})
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE})
    decoders: list[dict] = [
        {"type": "Replace", "pattern": {"String": SPIECE_UNDERLINE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    body = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": _vocab(tokens),
            "merges": _spm_merges(tokens, scores),
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
    }
    return body, True, False


def _spm_merges(tokens: list[str], scores: list[float]) -> list[list[str]]:
    """Merges that make a BPE behave like llama.cpp's SPM tokenizer.

    llama.cpp repeatedly joins the adjacent pair whose concatenation is the vocabulary token with
    the highest score (leftmost on ties). So every split of a token into two tokens is a merge,
    ranked by the score of the token it forms (ties by token id), like transformers'
    `SentencePieceExtractor`.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    order = sorted(range(len(tokens)), key=lambda i: -float(scores[i]))
    merges: list[list[str]] = []
    for i in order:
        piece = tokens[i]
        local = [
            (ids[piece[:k]], ids[piece[k:]])
            for k in range(1, len(piece))
            if piece[:k] in ids and piece[k:] in ids
        ]
        merges.extend([tokens[a], tokens[b]] for a, b in sorted(local))
    return merges


def _token_kinds(tokens: list[str], types: list[int], meta: dict) -> list[int]:
    """Token types after llama.cpp's corrections by token text (`llama_vocab::impl::load`)."""
    kinds = [int(k) for k in types]
    fim = {
        text
        for keys, texts in _FIM_BY_TEXT.items()
        if not any(f"tokenizer.ggml.{k}_token_id" in meta for k in keys)
        for text in texts
    }
    for i, text in enumerate(tokens):
        if text in _CONTROL_BY_TEXT or text in fim:
            kinds[i] = TOKEN_CONTROL
        if text in _USER_DEFINED_BY_TEXT:
            kinds[i] = TOKEN_USER_DEFINED
    # o200k_harmony and solar-open: "<|end|>" is no end-of-generation token there.
    present = set(tokens)
    if "<|end|>" in present and (
        {"<|return|>", "<|call|>"} <= present or {"<|calls|>", "<|flush|>"} <= present
    ):
        kinds[tokens.index("<|end|>")] = TOKEN_USER_DEFINED
    return kinds


def _added_tokens(tokens: list[str], types: list[int], meta: dict) -> list[dict]:
    """Tokens llama.cpp matches as a whole in the text when it parses special tokens.

    Also applies the whitespace stripping that llama.cpp sets by model name
    (`llama_vocab::impl::load`, "Handle per token attributes").
    """
    name = str(meta.get("general.name") or "").lower()
    pre = str(meta.get("tokenizer.ggml.pre") or "")
    phi3 = "phi-3" in name or "phi3" in name
    lstrip = set()
    if pre in ("jina-v2-de", "jina-v2-es", "jina-v2-code"):
        lstrip.add("<mask>")
    elif "modern-bert" in name:
        lstrip.add("[MASK]")
    added = []
    for i, (text, kind) in enumerate(zip(tokens, _token_kinds(tokens, types, meta), strict=False)):
        if kind not in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN):
            continue
        added.append(
            {
                "id": i,
                "content": text,
                "single_word": False,
                "lstrip": text in lstrip,
                "rstrip": phi3 and text not in ("<unk>", "<s>", "<|endoftext|>"),
                "normalized": False,
                "special": kind != TOKEN_USER_DEFINED,
            }
        )
    return added


def _post_processor(tokens: list[str], bos: str | None, eos: str | None) -> dict | None:
    if bos is None and eos is None:
        return None
    ids = {t: i for i, t in enumerate(tokens)}

    def piece(seq: str, type_id: int) -> list[dict]:
        out = [{"SpecialToken": {"id": bos, "type_id": type_id}}] if bos else []
        out.append({"Sequence": {"id": seq, "type_id": type_id}})
        if eos:
            out.append({"SpecialToken": {"id": eos, "type_id": type_id}})
        return out

    specials = {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (bos, eos) if t}
    return {
        "type": "TemplateProcessing",
        "single": piece("A", 0),
        "pair": piece("A", 0) + piece("B", 1),
        "special_tokens": specials,
    }


def _vocab(tokens: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tokens)}


def _bpe_merges(merges: list[str], tokens: list[str]) -> list[list[str]]:
    """`tokenizer.ggml.merges` as pairs, split like llama.cpp (first space after the first char).

    tokenizers refuses merges whose parts or result are not in the vocabulary, so those are
    dropped; llama.cpp keeps them, but a merge that forms no token only changes its output when
    an unknown piece falls back to bytes.
    """
    vocab = set(tokens)
    pairs, dropped = [], 0
    for merge in merges:
        pos = merge.find(" ", 1)
        left, right = merge[:pos], merge[pos + 1 :]
        if pos < 0 or left not in vocab or right not in vocab or left + right not in vocab:
            dropped += 1
            continue
        pairs.append([left, right])
    if dropped:
        log.warning("gguf_tokenizer.merges_dropped", count=dropped, detail="not in the vocabulary")
    return pairs


def _list(meta: dict, key: str) -> list:
    value = meta.get(key)
    if value is None:
        return []
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _scalar(meta: dict, key: str, default: Any) -> Any:
    value = meta.get(key)
    if value is None:
        return default
    return value.item() if hasattr(value, "item") else value


def _dumps(obj: Any, indent: int | None = 2) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=indent).encode("utf-8")
