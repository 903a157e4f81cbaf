"""Labels become one safe folder name, never a path."""

from __future__ import annotations

import pytest

from crawler.labels import sanitize_label


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("ants", "ants"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("../../etc", "_.._etc"),
        ("..", None),
        (".hidden", "hidden"),
        ("  golden   retriever ", "golden retriever"),
        ("tab\tand\nnewline", "tab and newline"),
        ("bell\x07char", "bellchar"),
        ("café", "café"),
        ("cafe\u0301", "café"),  # decomposed input is NFC-normalised: one folder, not two
        ("猫", "猫"),
        ("", None),
        ("///", None),
    ],
)
def test_sanitize_label(label: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="no usable characters"):
            sanitize_label(label)
        return
    result = sanitize_label(label)
    assert result == expected
    assert "/" not in result and "\\" not in result
    assert result not in (".", "..") and not result.startswith(".")


def test_long_label_is_cut_to_255_utf8_bytes_without_splitting_a_character() -> None:
    result = sanitize_label("é" * 300)
    assert len(result.encode("utf-8")) <= 255
    assert set(result) == {"é"}
