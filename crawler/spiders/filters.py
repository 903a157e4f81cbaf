"""The search filters people expect, in one vocabulary across the search spiders.

Each search spider maps the filters it supports onto its service's own parameters (the README's
filters table lists them); a value outside :data:`VALUES`, or a filter the service lacks, is the
user's mistake and raises :class:`crawler.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crawler.errors import UserError

__all__ = ["FILTERS", "VALUES", "chosen_filters"]

#: The filter names (``-a <name>=<value>``) and the values each takes.
VALUES: dict[str, tuple[str, ...]] = {
    "size": ("small", "medium", "large", "wallpaper"),
    "type": ("photo", "clipart", "line", "animated"),
    "license": ("any", "public", "share", "commercial", "modify", "modify_commercial"),
    "color": ("color", "bw", "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink",
              "brown", "black", "gray", "white"),
    "layout": ("square", "wide", "tall"),
    "safesearch": ("strict", "moderate", "off"),
    "region": (),  # a locale such as en-US: free text, checked by its shape
}
FILTERS = tuple(VALUES)


def chosen_filters(
    spider: str, given: dict[str, Any], supported: Mapping[str, Any], rest: dict[str, Any] | None = None
) -> dict[str, str]:
    """Check the filter arguments ``given`` to a spider (``{name: value or None}``; each
    spider declares the filters it has as keyword arguments). Common filters found in the
    spider's other arguments ``rest`` (filters it lacks) are popped from it and refused.

    ``supported`` maps each filter the service has to its values' parameters (a dict keyed by
    the values of :data:`VALUES` it supports; ``None`` for free text such as ``region``).

    Returns:
        ``{filter: value}`` of the filters given (lower-cased, ``region`` as given).

    Raises:
        UserError: a filter the service lacks, or a value outside the supported ones.
    """
    given = {**given, **{name: rest.pop(name) for name in FILTERS if rest and name in rest}}
    chosen: dict[str, str] = {}
    for name in FILTERS:
        raw = given.get(name)
        if raw in (None, ""):
            continue
        value = str(raw).strip()
        if name not in supported:
            have = ", ".join(sorted(supported)) or "none"
            raise UserError(f"the {spider} spider has no {name} filter (filters it has: {have})")
        values = supported[name]
        if values is None:
            if not value.replace("-", "").replace("_", "").isalnum():
                raise UserError(f"{name} must be a locale such as en-US, got {value!r} (e.g. -a {name}=en-US)")
        else:
            value = value.lower()
            if value not in values:
                raise UserError(
                    f"{name} must be one of {', '.join(values)} for the {spider} spider, got {raw!r} "
                    f"(e.g. -a {name}={next(iter(values))})"
                )
        chosen[name] = value
    return chosen
