"""engine/grammar.py: `format` as a schema, schemas and Lark grammars checked before any model
loads (a feature llguidance lacks is named), and the `Constraint` logits processor against
SmolLM2's own tokenizer: what it allows, what it refuses, and that its mask is llguidance's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlxollama.engine import grammar
from mlxollama.errors import InvalidOption

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}},
                "required": ["kind"],
            },
        },
    },
    "required": ["name", "age", "pets"],
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("json", {"type": "object"}),
        (NESTED, NESTED),
    ],
)
def test_schema_of_maps_ollamas_format(value, expected):
    assert grammar.schema_of(value) == expected


def test_schema_of_json_is_a_fresh_dict():
    grammar.schema_of("json")["properties"] = {}
    assert grammar.schema_of("json") == {"type": "object"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yaml", "invalid format: 'yaml': use \"json\" or a JSON schema object"),
        ("JSON", "invalid format: 'JSON'"),
        (5, '"format" must be "json" or a JSON schema object'),
        (["json"], '"format" must be "json" or a JSON schema object'),
    ],
)
def test_schema_of_refuses_other_values(value, message):
    with pytest.raises(InvalidOption, match=message.replace("(", r"\(")):
        grammar.schema_of(value)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "if": {}, "then": {}}, '"if"'),
        ({"type": "array", "uniqueItems": True}, '"uniqueItems"'),
        ({"not": {"type": "string"}}, '"not"'),
        ({"type": "array", "contains": {"type": "integer"}}, '"contains"'),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, '"propertyNames"'),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, '"dependentRequired"'),
        ({"type": "string", "format": "postcode"}, "Unknown format: postcode"),
        ({"type": "strang"}, "Invalid type: strang"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength (5) is greater"),
        ({"$ref": "https://example.com/s.json"}, "https://example.com/s.json"),
    ],
)
def test_json_grammar_names_what_it_cannot_do(schema, named):
    with pytest.raises(InvalidOption) as e:
        grammar.json_grammar(schema)
    assert str(e.value).startswith("unsupported JSON schema in format: ")
    assert named in str(e.value)


@pytest.mark.parametrize(
    "schema",
    [
        NESTED,
        {"type": "object"},
        {},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}},
        {"type": "string", "pattern": "^[a-z]+$"},
        {"type": "string", "format": "email"},
        {"type": "object", "properties": {"a": {"const": 1}}, "additionalProperties": False},
    ],
)
def test_json_grammar_takes_the_features_it_supports(schema):
    assert grammar.json_grammar(schema)


def test_json_grammar_keeps_the_callers_schema_untouched():
    schema = json.loads(json.dumps(NESTED))
    grammar.json_grammar(schema)
    assert schema == NESTED


def test_lark_grammar_checks_and_names_its_caller():
    assert grammar.lark_grammar('start: "yes" | "no"', "tool_choice")
    with pytest.raises(InvalidOption, match=r"^unsupported tool_choice: "):
        grammar.lark_grammar("start: undefined_rule", "tool_choice")


# -- the constraint, on SmolLM2's tokenizer -----------------------------------------------


@pytest.fixture(scope="module")
def lm(smollm2_loaded):
    return smollm2_loaded


def allowed(logits) -> np.ndarray:
    return np.isfinite(np.array(logits)).reshape(-1)


def step(c, tokens, width):
    """The constraint's logits for `tokens` (zeros in, so what stays finite is allowed)."""
    import mlx.core as mx

    return allowed(c(mx.array(tokens), mx.zeros((1, width))))


@pytest.mark.model
def test_constraint_allows_a_valid_answer_and_then_only_the_end(lm):
    c = grammar.constraint(lm, grammar.json_grammar(NESTED))
    width = c.vocab_size
    answer = '{"name": "Ann", "age": 31, "pets": [{"kind": "cat"}]}'
    tokens = lm.tokenizer.encode(answer)
    prompt = lm.tokenizer.encode("Describe Ann.")
    seen = list(prompt)
    mask = step(c, seen, width)
    for token in tokens:
        assert mask[token], lm.tokenizer.decode([token])
        seen.append(token)
        mask = step(c, seen, width)
    assert set(np.nonzero(mask)[0]) == set(lm.tokenizer.eos_token_ids)


@pytest.mark.model
def test_constraint_refuses_what_breaks_the_schema(lm):
    c = grammar.constraint(lm, grammar.json_grammar(NESTED))
    width = c.vocab_size
    mask = step(c, [1, 2, 3], width)
    word = lm.tokenizer.encode("Hello")[0]
    opening = lm.tokenizer.encode('{"')  # a required key follows the brace: one token
    assert len(opening) == 1 and mask[opening[0]] and not mask[word]
    assert not any(mask[t] for t in lm.tokenizer.eos_token_ids)  # not before it is complete
    with pytest.raises(RuntimeError, match=f"token {word} is not allowed by the grammar"):
        step(c, [1, 2, 3, word], width)


@pytest.mark.model
def test_constraint_enforces_bounds_and_enums(lm):
    c = grammar.constraint(lm, grammar.json_grammar(NESTED))
    width = c.vocab_size
    seen = lm.tokenizer.encode("x") + lm.tokenizer.encode('{"name": "Ann", "age": 1')
    step(c, seen[:1], width)
    for i in range(2, len(seen) + 1):
        mask = step(c, seen[:i], width)
    digits = {d: lm.tokenizer.encode(d) for d in ("0", "5", "00")}
    # after "1": "12" and "120" fit the maximum of 120, a third digit after "12" may not be 9
    assert mask[digits["0"][0]] and mask[digits["5"][0]]
    seen += lm.tokenizer.encode("2")
    mask = step(c, seen, width)
    nine = lm.tokenizer.encode("9")[0]
    assert mask[digits["0"][0]] and not mask[nine]


@pytest.mark.model
def test_constraint_mask_is_llguidances_own(lm):
    """Our numpy unpacking of the bitmask allows exactly the ids llguidance's reference
    `apply_token_bitmask_inplace` leaves finite, at a state with a scattered mask."""
    import llguidance.numpy as lnp

    c = grammar.constraint(lm, grammar.json_grammar(NESTED))
    seen = lm.tokenizer.encode("x") + lm.tokenizer.encode('{"name": "A')
    for i in range(1, len(seen) + 1):
        ours = step(c, seen[:i], c.vocab_size)
        logits = np.zeros((1, c.vocab_size), dtype=np.float32)
        lnp.apply_token_bitmask_inplace(logits, c.bits.reshape(1, -1))
        assert np.array_equal(ours, np.isfinite(logits[0]))
    assert 1000 < ours.sum() < c.vocab_size  # inside a string: most ids, not all


@pytest.mark.model
def test_constraint_pads_wider_logits_and_reuses_a_position(lm):
    import mlx.core as mx

    c = grammar.constraint(lm, grammar.json_grammar({"type": "object"}))
    prompt = [1, 2, 3]
    narrow = step(c, prompt, c.vocab_size)
    wide = step(c, prompt, c.vocab_size + 64)  # logits padded past the tokenizer
    assert wide.shape == (c.vocab_size + 64,) and not wide[c.vocab_size :].any()
    assert np.array_equal(wide[: c.vocab_size], narrow)
    brace = lm.tokenizer.encode("{")[0]
    after = step(c, [*prompt, brace], c.vocab_size)
    # the same position again (a sequence moved into the batch): no second consume
    again = step(c, [*prompt, brace], c.vocab_size)
    assert np.array_equal(after, again) and not np.array_equal(after, narrow)
    out = c(mx.array([*prompt, brace]), mx.ones((1, c.vocab_size), dtype=mx.float16))
    assert out.dtype == mx.float16


def test_closed_allows_only_the_named_keys_as_ollama_does():
    schema = {
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"type": "string"}}}},
        "type": "object",
        "properties": {
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
            "home": {"anyOf": [{"type": "object", "properties": {"city": {}}}, {"type": "null"}]},
            "open": {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
            "typed": {
                "type": "object",
                "properties": {},
                "additionalProperties": {"type": "string"},
            },
            "patterned": {"type": "object", "properties": {}, "patternProperties": {"^x": {}}},
            "merged": {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]},
            "properties": {"type": "object", "properties": {"properties": {}}},  # names only
        },
        "default": {"properties": {}},  # a value, not a schema
    }
    out = grammar.closed(schema)
    assert out["additionalProperties"] is False
    assert out["$defs"]["Pet"]["additionalProperties"] is False
    props = out["properties"]
    assert props["home"]["anyOf"][0]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert props["typed"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in props["patterned"]
    assert all("additionalProperties" not in b for b in props["merged"]["allOf"])
    assert props["properties"]["additionalProperties"] is False
    assert set(props["properties"]["properties"]) == {"properties"}
    assert out["default"] == {"properties": {}}
    assert "additionalProperties" not in schema  # the caller's schema is untouched
    assert grammar.closed({"type": "object"}) == {"type": "object"}  # format "json": any object


@pytest.mark.model
def test_constraint_refuses_keys_the_schema_does_not_name(lm):
    c = grammar.constraint(lm, grammar.json_grammar({"type": "object", "properties": {"a": {}}}))
    seen = [1]
    step(c, seen, c.vocab_size)
    for token in lm.tokenizer.encode('{"a": 1'):
        seen.append(token)
        mask = step(c, seen, c.vocab_size)
    comma, close = lm.tokenizer.encode(","), lm.tokenizer.encode("}")
    assert mask[close[0]] and not mask[comma[0]]
