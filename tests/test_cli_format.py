import pytest

from mlxollama.cli.format import go_duration, human_bytes, human_duration, stats, table


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (98_362_432, "98 MB"),
        (4_700_000_000, "4.7 GB"),
        (986_000_000, "986 MB"),
        (12_300_000_000, "12 GB"),
        (2_000_000_000, "2 GB"),
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (45, "45 seconds"),
        (61, "About a minute"),
        (300, "5 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (15 * 86400, "2 weeks"),
        (70 * 86400, "2 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(s, text):
    assert human_duration(s) == text


def test_table_has_no_borders_and_four_space_gaps():
    out = table(["NAME", "ID"], [["smollm2:latest", "abc"], ["x:1", "defghi"]])
    assert out.splitlines() == [
        "NAME              ID",
        "smollm2:latest    abc",
        "x:1               defghi",
    ]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (812, "812ns"),
        (1_500, "1.5µs"),
        (12_345_600, "12.3456ms"),
        (1_234_567_890, "1.23456789s"),
        (75 * 10**9, "1m15s"),
    ],
)
def test_go_duration(ns, text):
    assert go_duration(ns) == text


def test_stats_block_omits_zero_lines():
    out = stats(
        {"total_duration": 2 * 10**9, "eval_count": 10, "eval_duration": 10**9, "load_duration": 0}
    )
    assert "load duration" not in out
    assert "eval rate:            10.00 tokens/s" in out
    assert out.splitlines()[0] == "total duration:       2s"
