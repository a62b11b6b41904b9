import pytest

from mlxollama.errors import InvalidDigest, InvalidName
from mlxollama.store.names import ModelName, parse_digest, parse_name

VALID = [
    ("llama3", "registry.ollama.ai/library/llama3:latest", "llama3:latest"),
    ("llama3:8b", "registry.ollama.ai/library/llama3:8b", "llama3:8b"),
    ("user/model", "registry.ollama.ai/user/model:latest", "user/model:latest"),
    ("example.com/ns/m:v1.2", "example.com/ns/m:v1.2", "example.com/ns/m:v1.2"),
    ("localhost:5000/ns/m", "localhost:5000/ns/m:latest", "localhost:5000/ns/m:latest"),
    ("https://example.com/ns/m:t", "example.com/ns/m:t", "example.com/ns/m:t"),
    (
        "_private.model-1:tag_2",
        "registry.ollama.ai/library/_private.model-1:tag_2",
        "_private.model-1:tag_2",
    ),
    ("SmolLM2:Latest", "registry.ollama.ai/library/SmolLM2:Latest", "SmolLM2:Latest"),
]

INVALID = [
    "",
    "   ",
    "m:",
    ":tag",
    "/m",
    "ns/",
    "a//m",
    "a/b/c/d",
    "..",
    "../etc/passwd",
    "ns/..",
    "ns/../m",
    ".hidden",
    "m:..",
    "m:-tag",
    "ns.with.dot/m",
    "m" * 81,
    "m:" + "t" * 81,
    "sp ace",
    "semi;colon",
    "back\\slash",
    "victim\n",
    " victim",
    "victim ",
    "victim\t",
    "vic\x00tim",
    "victim\r\n",
    "h" * 256 + "/ns/m",  # no longer a file name (NAME_MAX 255)
]


@pytest.mark.parametrize(("text", "full", "short"), VALID)
def test_valid_names_parse_with_defaults(text, full, short):
    name = parse_name(text)
    assert str(name) == full
    assert name.display() == short
    assert name.is_fully_qualified()
    assert str(name.path()) == full.replace(":", "/", full.count(":")).replace(
        "localhost/5000", "localhost:5000"
    )


@pytest.mark.parametrize("text", INVALID)
def test_invalid_names_are_rejected(text):
    with pytest.raises(InvalidName):
        parse_name(text)


def test_path_refuses_partial_names():
    with pytest.raises(InvalidName):
        ModelName(model="m").path()


def test_tag_split_only_after_last_slash():
    name = ModelName.parse_bare("host:5000/ns/m")
    assert (name.host, name.namespace, name.model, name.tag) == ("host:5000", "ns", "m", "")


def test_casefold_compares_names_case_insensitively():
    assert parse_name("SmolLM2:Latest").casefold() == parse_name("smollm2:latest").casefold()


@pytest.mark.parametrize(
    ("text", "digest"),
    [
        ("sha256:" + "a" * 64, "sha256:" + "a" * 64),
        ("sha256-" + "A" * 64, "sha256:" + "a" * 64),
    ],
)
def test_digests_normalise(text, digest):
    assert parse_digest(text) == digest


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "g" * 64,
        "md5:" + "a" * 64,
        "sha256:../" + "a" * 61,
        "",
        None,
    ],
)
def test_bad_digests_are_rejected(text):
    with pytest.raises(InvalidDigest):
        parse_digest(text)


def test_part_grammar_fuzz():
    """Whatever the text, a name that parses never yields a path part that escapes."""
    import random

    rng = random.Random(7)
    alphabet = "ab/:.-_\\~ \x00"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            name = parse_name(text)
        except InvalidName:
            continue
        for part in name.path().parts:
            assert part not in (".", "..") and "/" not in part and "\\" not in part


def test_the_longest_parts_that_fit_a_path_parse():
    name = parse_name("h" * 255 + "/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80)
    assert all(len(part.encode()) <= 255 for part in name.path().parts)


def test_a_part_too_long_says_which_and_the_limit():
    with pytest.raises(InvalidName, match=r"the host is 300 characters long, at most 255"):
        parse_name("h" * 300 + "/ns/m")


def test_the_scheme_is_kept_but_not_part_of_the_identity():
    assert parse_name("http://localhost:5000/ns/m").scheme == "http"
    assert parse_name("localhost:5000/ns/m").scheme == ""
    assert parse_name("http://localhost:5000/ns/m") == parse_name("localhost:5000/ns/m")


@pytest.mark.parametrize("text", ["sha256:" + "a" * 64 + "\n", " sha256:" + "a" * 64])
def test_digests_with_whitespace_are_rejected(text):
    with pytest.raises(InvalidDigest):
        parse_digest(text)
