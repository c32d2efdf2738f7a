"""Run gadgets in this process, without sockets: for tests, notebooks and debugging a chain step by step.

`InProcessConnection` offers what a gadget uses of gadgetron.external.Connection (header, config,
iteration, filter, send, the `writers` list of (accepts, writer) pairs) over a list of items, and records
what the gadget sends.
`run_chain` runs gadgets one after another, each on the previous one's output, like a stream of
`<external>` nodes (without the re-serialisation between processes: the wire side is tested through real
sockets by the replay's tests).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Sequence

import ismrmrd

_WIRE_TYPES = (ismrmrd.Image, ismrmrd.Acquisition, ismrmrd.Waveform)  # what gadgetron-python can write


def configuration(properties: dict[str, object] | None) -> ElementTree.Element | None:
    """A `<configuration>` element with one `<property>` per entry (None for None)."""
    if properties is None:
        return None
    root = ElementTree.Element("configuration")
    for name, value in properties.items():
        ElementTree.SubElement(root, "property", name=name, value=str(value))
    return root


class InProcessConnection:
    """A gadget's connection over `items`; `sent` collects what the gadget sends (or filters back)."""

    def __init__(self, header, items: Iterable, config: ElementTree.Element | None = None):
        self.header = header
        self.config = config
        self._items = iter(items)
        self._filters: list[Callable] = []
        self.writers: list[tuple[Callable, Callable | None]] = [(lambda item: isinstance(item, _WIRE_TYPES), None)]
        self.sent: list = []

    def __iter__(self):
        for item in self._items:
            if all(predicate(item) for predicate in self._filters):
                yield item
            else:
                self.send(item)

    def filter(self, predicate) -> None:
        if isinstance(predicate, type):
            self._filters.append(lambda item, t=predicate: isinstance(item, t))
        else:
            self._filters.append(predicate)

    def send(self, item) -> None:
        if not any(accepts(item) for accepts, _ in self.writers):
            raise TypeError(f"No appropriate writer found for item of type '{type(item)}'")
        self.sent.append(item)


def run_chain(header, items: Iterable, stages: Sequence[tuple[Callable, dict | None]]) -> list:
    """Run (gadget function, properties) stages in order, each on the previous one's output; returns the
    last stage's output. An exception in a stage propagates (its ERROR message is in that stage's output)."""
    current = list(items)
    for gadget, properties in stages:
        connection = InProcessConnection(header, current, configuration(properties))
        gadget(connection)
        current = connection.sent
    return current
