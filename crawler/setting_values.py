"""Typed, validated reads of the crawl's settings, each default in one place: ``crawler/settings.py``.

Components read their settings in ``from_crawler`` through these getters (Scrapy's typed
getters underneath) and keep no default of their own. A setting missing from the crawl's
settings (a component built outside ``scrapy crawl``, e.g. ``scrapy.utils.test.get_crawler``)
takes its value from ``crawler/settings.py``, the same default a crawl gets. A bad value is
the user's to fix: ``UserError`` naming the setting, what it must be and an example, e.g.
``VERIFY_MIN_SIDE must be a whole number of pixels >= 1, got 'abc' (e.g. -s VERIFY_MIN_SIDE=64)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crawler import settings as defaults
from crawler.errors import UserError

__all__ = ["dedupe_hash", "dedupe_rule", "get_bool", "get_choice", "get_int", "get_list", "get_raw"]


def get_raw(settings: Any, name: str) -> Any:
    """The value of setting ``name``, or its default from ``crawler/settings.py`` when unset."""
    value = settings.get(name)
    return getattr(defaults, name, None) if value is None else value


def _fail(name: str, expected: str, value: Any, example: Any) -> UserError:
    return UserError(f"{name} must be {expected}, got {value!r} (e.g. -s {name}={example})")


def get_int(
    settings: Any,
    name: str,
    *,
    unit: str = "",
    minimum: int | None = None,
    maximum: int | None = None,
    example: int,
    note: str = "",
) -> int:
    """Setting ``name`` as an ``int`` within ``[minimum, maximum]`` (either bound optional).

    ``unit`` (e.g. ``"pixels"``) and ``note`` (e.g. ``"0: no resize"``) only shape the message.

    Raises:
        UserError: the value is not a whole number or is out of range.
    """
    raw = get_raw(settings, name)
    of = f" of {unit}" if unit else ""
    if minimum is not None and maximum is not None:
        expected = f"a whole number{of} in {minimum}-{maximum}"
    elif minimum is not None:
        expected = f"a whole number{of} >= {minimum}"
    else:
        expected = f"a whole number{of}"
    if note:
        expected += f" ({note})"
    if isinstance(raw, bool):
        raise _fail(name, expected, raw, example)
    try:
        value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
    except (TypeError, ValueError):
        raise _fail(name, expected, raw, example) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(name, expected, raw, example)
    return value


def get_bool(settings: Any, name: str) -> bool:
    """Setting ``name`` as a ``bool`` (Scrapy's ``getbool``: 1/0, true/false, True/False).

    Raises:
        UserError: any other value.
    """
    raw = get_raw(settings, name)
    try:
        return bool(int(raw))
    except (TypeError, ValueError):
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise _fail(name, "true or false (1 or 0)", raw, 1) from None


def get_list(settings: Any, name: str) -> list[str]:
    """Setting ``name`` as a list of strings (a list, or a comma-separated string)."""
    raw = get_raw(settings, name)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return [str(part) for part in raw]


def get_choice(settings: Any, name: str, choices: Iterable[str]) -> str:
    """Setting ``name``, which must be one of ``choices``.

    Raises:
        UserError: any other value; the message lists the valid ones.
    """
    valid = list(choices)
    raw = get_raw(settings, name)
    if raw not in valid:
        raise _fail(name, f"one of {', '.join(valid)}", raw, valid[0])
    return str(raw)


def dedupe_hash(settings: Any) -> str:
    """``DEDUPE_HASH``, one of ``crawler.images.hashing.HASH_NAMES`` (every stage that
    hashes or compares reads it here, the same way).

    Raises:
        UserError: an unknown hash; the message lists the valid ones.
    """
    # Here, not at the top: spiders read their settings through this module, and every scrapy
    # command loads every spider; the image libraries would add 0.3 s to each.
    from crawler.images.hashing import HASH_NAMES

    return get_choice(settings, "DEDUPE_HASH", HASH_NAMES)


def dedupe_rule(settings: Any) -> Any:
    """The match rule (``crawler.images.matching.DedupeRule``) of ``DEDUPE_HASH`` and the
    ``DEDUPE_*`` thresholds; a threshold left at ``None`` takes the hash's value from
    ``DEDUPE_DEFAULTS`` (``crawler/settings.py``).

    Raises:
        UserError: an unknown hash, a distance outside 0 to the hash's bits - 1, a quality
            outside 0-100, a look difference that is not a number >= 0, or a second look asked
            of a hash without thumbnails (only ``pdq`` has them).
    """
    from crawler.images.hashing import HASH_BITS, PDQ
    from crawler.images.matching import DedupeRule
    from crawler.images.pdq import PDQ_BITS

    name = dedupe_hash(settings)
    per_hash = dict(get_raw(settings, "DEDUPE_DEFAULTS") or defaults.DEDUPE_DEFAULTS).get(name, {})
    top = (PDQ_BITS if name == PDQ else HASH_BITS) - 1

    class _Merged:
        def get(self, key: str) -> Any:
            value = settings.get(key)
            return per_hash.get(key) if value is None else value

    merged = _Merged()

    def bits(key: str, example: int, note: str = "") -> int:
        return get_int(merged, key, unit="bits", minimum=0, maximum=top, example=example, note=note)

    def level(key: str, example: float) -> float:
        raw = merged.get(key)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = -1.0
        if not value >= 0:
            raise _fail(key, "a number >= 0", raw, example)
        return value

    difference = level("DEDUPE_LOOK_DIFFERENCE", 0.1)
    align = level("DEDUPE_ALIGN_DIFFERENCE", 0.13) if merged.get("DEDUPE_ALIGN_DIFFERENCE") is not None else 0.0
    window = (
        get_int(merged, "DEDUPE_WINDOW_DISTANCE", unit="bits", minimum=0, maximum=HASH_BITS - 1, example=8, note="0: no phash windows")
        if merged.get("DEDUPE_WINDOW_DISTANCE") is not None
        else 0
    )
    rule = DedupeRule(
        hash_name=name,
        max_distance=bits("DEDUPE_MAX_DISTANCE", 31 if name == PDQ else 6),
        variant_distance=bits("DEDUPE_VARIANT_DISTANCE", 24 if name == PDQ else 8, "0: no windows"),
        min_quality=get_int(merged, "DEDUPE_MIN_QUALITY", minimum=0, maximum=100, example=50),
        look_distance=bits("DEDUPE_LOOK_DISTANCE", 50, "0: no second look"),
        look_difference=difference,
        window_distance=window,
        align_difference=align,
    )
    if rule.window_distance and name != PDQ:
        raise UserError(
            f"DEDUPE_WINDOW_DISTANCE needs DEDUPE_HASH=pdq, got DEDUPE_HASH={name} "
            "(the 64-bit hashes use DEDUPE_VARIANT_DISTANCE for their windows; e.g. -s DEDUPE_WINDOW_DISTANCE=0)"
        )
    if rule.look_distance and name != PDQ:
        raise UserError(
            f"DEDUPE_LOOK_DISTANCE needs DEDUPE_HASH=pdq, got DEDUPE_HASH={name} "
            "(e.g. -s DEDUPE_LOOK_DISTANCE=0, or -s DEDUPE_HASH=pdq)"
        )
    return rule
