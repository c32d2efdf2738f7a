"""Gadget properties: `<property name=".." value=".."/>` in an `<external>` node's `<configuration>`.

Each gadget declares a table of `Property` (name, default, parser, help); `read_properties` parses the
node's configuration against it. Every property has a default, so a node may have no configuration at all
(Gadgetron then sends only an XML declaration and gadgetron-python gives `connection.config = None`).
Unknown names, duplicates and values the parser rejects are a `GadgetConfigError` that names the gadget,
the property and what would be accepted. Values are strings in the XML; parsers turn them into Python
values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger(__name__)


class GadgetConfigError(ValueError):
    """A property that is unknown, repeated or has a value its parser rejects."""


@dataclass(frozen=True)
class Property:
    name: str
    default: str
    parse: Callable[[str], object]
    help: str


# ---- parsers: str -> value, ValueError with a short reason -----------------------------------------
def text(value: str) -> str:
    return value.strip()


def optional_path(value: str) -> Path | None:
    """Empty means none."""
    value = value.strip()
    return Path(value).expanduser() if value else None


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value.strip())
        if number < low or (high is not None and number > high):
            raise ValueError(f"must be an integer in [{low}, {high if high is not None else 'inf'}]")
        return number

    return parse


def number(low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        x = float(value.strip())
        below = x <= low if low_open else x < low
        if not x == x or below or (high is not None and x > high):
            bracket = "(" if low_open else "["
            raise ValueError(f"must be a number in {bracket}{low:g}, {high if high is not None else 'inf'}]")
        return x

    return parse


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def window(value: str) -> tuple[float, float] | None:
    """'centre,width' in the map's unit; empty means the table default."""
    if not value.strip():
        return None
    parts = [float(p) for p in value.split(",")]
    if len(parts) != 2 or not parts[1] > 0:
        raise ValueError("must be 'centre,width' with width > 0 (or empty for the default)")
    return parts[0], parts[1]


def names(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated subset of `allowed`, in the order given."""

    def parse(value: str) -> tuple[str, ...]:
        chosen = tuple(p.strip() for p in value.split(",") if p.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise ValueError(f"must be a comma-separated list of {', '.join(allowed)}")
        return chosen

    return parse


# ---- reading ---------------------------------------------------------------------------------------
def _given(config, gadget: str) -> dict[str, str]:
    """name -> value of the configuration's <property> elements."""
    given: dict[str, str] = {}
    if config is None:
        return given
    for element in config.iter("property"):
        name, value = element.get("name"), element.get("value")
        if name is None or value is None:
            raise GadgetConfigError(f"{gadget}: <property> needs name and value attributes; got {element.attrib}")
        if name in given:
            raise GadgetConfigError(f"{gadget}: property {name!r} is given twice")
        given[name] = value
    return given


def read_properties(config, table: Sequence[Property], gadget: str) -> SimpleNamespace:
    """Parse `config` (an ElementTree element or None) against `table`: one attribute per property."""
    known = {p.name: p for p in table}
    given = _given(config, gadget)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise GadgetConfigError(
            f"{gadget}: unknown propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(known)}"
        )
    values = {}
    for name, prop in known.items():
        raw = given.get(name, prop.default)
        try:
            values[name] = prop.parse(raw)
        except ValueError as exc:
            raise GadgetConfigError(f"{gadget}: property {name} = {raw!r}: {exc}") from None
    log.info("%s properties: %s", gadget, ", ".join(f"{k}={given.get(k, known[k].default)!r}" for k in known))
    return SimpleNamespace(**values)
