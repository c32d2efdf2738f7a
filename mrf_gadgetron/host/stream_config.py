"""Gadgetron version-2 stream configurations: parse what we can run, refuse the rest by name, find files.

We run configurations whose `<stream>` holds only `<external>` nodes with `<execute name=".."
target=".." type="python"/>`: each becomes a process (mrf_gadgetron.host.external). A `<distributed>`
node's stream runs here in place, as one chain for all its parts (Gadgetron runs it on a local worker
when no remote one is listed, one connection per part); its readers and writers only concern the
workers' sockets. Readers and writers are
Gadgetron's core ones (gadgetron_core_readers / gadgetron_core_writers); the readers say which client
messages are accepted, the writers which outputs reach the client (the rest are dropped, as Gadgetron
drops outputs no writer accepts). A stage receives its node's `<configuration>` element exactly as
Gadgetron 4 serializes it (Config.cpp, serialize_config: the element saved whole with an XML
declaration; only the declaration when the node has none).

Configuration names sent by clients (message 1) resolve only inside the configuration folder: a name
with a path separator or `..`, or that is not a plain `*.xml` file there (`.xml` may be omitted), is refused;
the refusal names the file and what is available, never the folder.

XML from clients (configurations, ISMRMRD headers) is checked by `refuse_doctype` before any parser sees
it: a document type declaration (`<!DOCTYPE`, and with it `<!ENTITY`) is refused outright, so no entity
is ever expanded (no "billion laughs", no external entities). Neither a Gadgetron configuration nor an
ISMRMRD header has any use for one, so nothing valid is lost and no dependency (defusedxml) is needed.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ismrmrd

from mrf_core.errors import MrfError
from mrf_gadgetron.host.messages import MessageId

CONFIG_DIR_ENV = "MRF_CONFIG_DIR"
XML_DECLARATION = '<?xml version="1.0"?>\n'

# Gadgetron core readers (client message ids they read) and writers (item types they write).
READERS = {"AcquisitionReader": MessageId.ACQUISITION, "WaveformReader": MessageId.WAVEFORM,
           "ImageReader": MessageId.IMAGE}
WRITERS = {"ImageWriter": ismrmrd.Image, "AcquisitionWriter": ismrmrd.Acquisition,
           "WaveformWriter": ismrmrd.Waveform}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class StreamConfigError(MrfError):
    """A configuration we cannot parse or run; the message says what and where."""


_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def refuse_doctype(text: str | bytes, what: str) -> str | None:
    """Why `text` (XML) is refused before parsing, or None: a DOCTYPE or ENTITY declaration (entity
    expansion, internal or external, is never wanted in a configuration or an ISMRMRD header)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    match = _DOCTYPE.search(data)
    if match is None:
        return None
    return (f"{what} refused: it has a {match[1].decode().upper()} declaration at byte {match.start()}; "
            f"document types and entities are not accepted (a configuration or ISMRMRD header needs none)")


@dataclass(frozen=True)
class ExternalNode:
    """One `<external>` node: python module and target (function or class), and the message-2 text."""

    module: str
    target: str
    configuration_xml: str

    @property
    def label(self) -> str:
        return f"{self.module}.{self.target}"


@dataclass(frozen=True)
class StreamConfig:
    """A runnable configuration: its source (file or 'inline'), reader and writer class names, nodes."""

    source: str
    readers: tuple[str, ...]
    writers: tuple[str, ...]
    nodes: tuple[ExternalNode, ...]

    @property
    def input_ids(self) -> set[int]:
        """Client message ids the readers accept."""
        return {int(READERS[name]) for name in self.readers}

    def writes(self, item) -> bool:
        """Whether an output item reaches the client (some top-level writer accepts it)."""
        return any(isinstance(item, WRITERS[name]) for name in self.writers)


def _classes(root: ET.Element, section: str, item: str, known: dict, source: str) -> tuple[str, ...]:
    names = []
    for node in root.findall(f"{section}/{item}"):
        dll, classname = (node.findtext(tag, "").strip() for tag in ("dll", "classname"))
        if classname not in known:
            raise StreamConfigError(f"{source}: {item} {classname or '(no classname)'} ({dll or 'no dll'}) cannot run "
                                    f"here; supported: {', '.join(sorted(known))} from gadgetron_core_{section}")
        names.append(classname)
    return tuple(names)


def _external(node: ET.Element, index: int, source: str,
              default_target: Callable[[str], str | None] | None = None) -> ExternalNode:
    where = f"{source}: stream node {index + 1} (<external>)"
    if node.find("connect") is not None:
        raise StreamConfigError(f"{where} uses <connect> (an already running module): only <execute> can run here")
    execute = node.find("execute")
    if execute is None:
        raise StreamConfigError(f"{where} has no <execute name=.. target=.. type=python/>")
    module, target = execute.get("name", "").strip(), execute.get("target", "").strip()
    language = execute.get("type", "").strip().lower()
    if module and not target and default_target is not None:
        target = default_target(module) or ""
    if language != "python":
        raise StreamConfigError(f"{where} has type {language or '(none)'!r}: only python externals run here")
    if not module or not target:
        raise StreamConfigError(f"{where} needs both execute name (module) and target (function or class); "
                                f"got name={module!r} target={target!r}")
    for own in ("readers", "writers"):  # empty ones are what Gadgetron writes when it forwards a configuration
        element = node.find(own)
        if element is not None and len(element):
            raise StreamConfigError(f"{where} has its own <{own}>: only the default ones are supported")
    configuration = node.find("configuration")
    text = XML_DECLARATION
    if configuration is not None:
        configuration.tail = None
        text += ET.tostring(configuration, encoding="unicode") + "\n"
    return ExternalNode(module, target, text)


def parse_stream_config(text: str | bytes, source: str = "inline",
                        default_target: Callable[[str], str | None] | None = None) -> StreamConfig:
    """Parse a version-2 configuration; StreamConfigError names what cannot run. A DOCTYPE or ENTITY
    declaration is refused before parsing (refuse_doctype). `default_target(module)` names the target of
    an `<execute>` without one (Gadgetron 4 drops the attribute when it forwards a `<distributed>` node's
    stream to a worker: Config.cpp's XMLSerializer writes `<execute>` with name and type only)."""
    refused = refuse_doctype(text, source)
    if refused:
        raise StreamConfigError(refused)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise StreamConfigError(f"{source}: not well-formed XML: {exc}") from exc
    if root.tag == "gadgetronStreamConfiguration":
        raise StreamConfigError(f"{source}: a legacy (version 1) configuration; only version 2 runs here")
    if root.tag != "configuration" or (root.findtext("version") or "").strip() != "2":
        raise StreamConfigError(f"{source}: not a Gadgetron stream configuration (<configuration> with "
                                f"<version>2</version>)")
    stream = root.find("stream")
    if stream is None:
        raise StreamConfigError(f"{source}: has no <stream>")
    nodes = []
    for index, node in enumerate(stream):
        if not isinstance(node.tag, str):
            continue  # comments
        inner = node.find("stream") if node.tag == "distributed" else None
        for external in ([node] if inner is None else [n for n in inner if isinstance(n.tag, str)]):
            if external.tag != "external":
                raise StreamConfigError(f"{source}: stream node {index + 1} is <{external.tag}>; only <external> "
                                        f"python nodes (alone or in a <distributed> stream) run without Gadgetron")
            nodes.append(_external(external, index, source, default_target))
    if not nodes:
        raise StreamConfigError(f"{source}: the <stream> has no <external> nodes")
    readers = _classes(root, "readers", "reader", READERS, source)
    writers = _classes(root, "writers", "writer", WRITERS, source)
    if not readers:
        raise StreamConfigError(f"{source}: no <readers>: the stream could not read any client message")
    return StreamConfig(source, readers, writers, tuple(nodes))


def load_stream_config(path: str | Path, source: str | None = None) -> StreamConfig:
    """The configuration in a file; `source` names it in errors (default: the path; the server passes the
    file name only, so that clients never read its folder)."""
    path = Path(path)
    source = str(path) if source is None else source
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise StreamConfigError(f"cannot read configuration {source}: {exc.strerror or exc}") from exc
    return parse_stream_config(text, source)


def default_config_dir() -> Path:
    """The configuration folder: $MRF_CONFIG_DIR, else config_xml/ of the checkout this package runs
    from (an editable install), else the configurations installed with the package (its package data
    mrf_gadgetron/config_xml)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "config_xml"
    return checkout if checkout.is_dir() else package / "config_xml"


def resolve_config_name(name: str, folder: str | Path | None = None) -> Path:
    """The file a client's configuration name (message 1) refers to, only ever inside `folder`. The
    `.xml` may be left out (MRD/FIRE clients name configurations without it)."""
    folder = Path(folder) if folder is not None else default_config_dir()
    if not _NAME.match(name) or ".." in name:
        raise StreamConfigError(f"configuration name {name!r} refused: a plain file name is required (letters, "
                                f"digits, _ . -; no path, no '..')")
    path = folder / (name if name.endswith(".xml") else f"{name}.xml")
    if not path.is_file() or path.resolve().parent != folder.resolve():
        available = sorted(p.name for p in folder.glob("*.xml")) if folder.is_dir() else []
        raise StreamConfigError(f"no configuration {name!r} (available: {', '.join(available) or 'none'})")
    return path


def find_config(spec: str | Path) -> StreamConfig:
    """A configuration from a path, else by name from the configuration folder (mrf_default.xml,
    mrf_default, ...)."""
    path = Path(spec)
    return load_stream_config(path if path.exists() or path.parent != Path(".") else resolve_config_name(str(spec)))
