"""`parse_size`: the memory sizes users type, all units binary (GB means 2**30, see budget.py)."""

from __future__ import annotations

import pytest

from planner.budget import format_size, parse_size
from runtime.errors import UserError

GIB = 2**30


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8GB", 8 * GIB),
        ("8 GiB", 8 * GIB),
        ("8gb", 8 * GIB),
        ("8G", 8 * GIB),
        ("8192MiB", 8 * GIB),
        ("8192 MB", 8 * GIB),
        ("7.5G", 7 * GIB + GIB // 2),
        (".5GB", GIB // 2),
        ("8589934592", 8 * GIB),
        ("8589934592B", 8 * GIB),
        ("  12 GiB  ", 12 * GIB),
        ("24K", 24 * 1024),
        ("1TB", 2**40),
        ("1", 1),
    ],
)
def test_sizes_users_type(text, expected):
    assert parse_size(text) == expected


def test_gb_is_binary_like_the_card_says():
    # An "8 GB" card holds 8 GiB; decimal GB would plan for 7.45 GiB of it.
    assert parse_size("8GB") == parse_size("8GiB") == 8 * 1024**3 != 8 * 10**9


@pytest.mark.parametrize(
    "text, words",
    [
        ("lots", ["'lots'", "is not a size"]),
        ("-1", ["'-1'", "is not a size"]),
        ("0", ["'0'", "more than zero"]),
        ("0GB", ["more than zero"]),
        ("0.1", ["more than zero"]),
        ("8XB", ["'8XB'", "unknown unit 'XB'"]),
        ("", ["''", "is not a size"]),
        ("   ", ["is not a size"]),
        ("8 G B", ["is not a size"]),
        ("2000TB", ["over 1 PiB"]),
        ("1e9", ["is not a size"]),
        ("nan", ["is not a size"]),
    ],
)
def test_refusals_name_the_input_and_the_fix(text, words):
    with pytest.raises(UserError) as info:
        parse_size(text, what="--vram")
    message = str(info.value)
    assert message.startswith("--vram ")
    assert "8GB" in message  # the fix: how to write it
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message


def test_format_size():
    assert format_size(8 * GIB) == "8.00 GiB"
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.50 KiB"
    assert parse_size(format_size(8 * GIB).replace(" ", "")) == 8 * GIB
