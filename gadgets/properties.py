"""Gadget properties: `<property name=".." value=".."/>` in an `<external>` node's `<configuration>`.

A gadget reads the settings of its stages from the one settings table (mrf_core.settings: names,
defaults, parsers and help shared with the command line). Every setting has a default, so a node may have
no configuration at all (Gadgetron then sends only an XML declaration and gadgetron-python gives
`connection.config = None`). Unknown names, duplicates, elements without name or value, and values the
parser rejects are a `GadgetConfigError` naming the gadget, the property and what would be accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace

from mrf_core.settings import Setting, SettingsError, parse_settings

log = logging.getLogger(__name__)


class GadgetConfigError(SettingsError):
    """A <configuration> whose properties a gadget cannot use."""


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


def read_properties(config, table: Sequence[Setting], gadget: str) -> SimpleNamespace:
    """Parse `config` (an ElementTree element or None) against `table`: one attribute per setting."""
    given = _given(config, gadget)
    try:
        values = parse_settings(given, table, gadget, "property")
    except SettingsError as exc:
        raise GadgetConfigError(str(exc)) from None
    log.info("%s properties: %s", gadget, ", ".join(f"{s.name}={given.get(s.name, s.default)!r}" for s in table))
    return values
