"""Tag addresses in the config: NodeId strings and browse paths, parsed without asyncua.

Parsing happens at config load so a typo is a one-line config error, not a BadNodeIdInvalid at 3 a.m.
Namespaces stay symbolic here (an index, a URI, or an alias declared in the device's `namespaces`):
an index can change when a server restarts, so URIs and aliases are turned into indices at every
connect, by the driver, from the server's NamespaceArray.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass

# ns=<index or alias>; or nsu=<uri>; then exactly one identifier.
_NODE = re.compile(r"^(?:(?:ns=(?P<ns>[^;]+)|nsu=(?P<nsu>[^;]+));)?(?P<kind>[isgb])=(?P<ident>.+)$", re.S)
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
NODE_HINT = "ns=2;s=Line1.Temp, ns=2;i=1001, nsu=urn:plant;s=Temp, ns=plant;g=<uuid>, ns=2;b=<base64> or i=2258"
PATH_HINT = "/Objects/2:Plant/2:Line1/2:Temp (each step is NS:Name, NS an index or a namespaces alias)"


@dataclass(frozen=True, slots=True)
class Namespace:
    """One of: an index (`index`), a URI (`uri`), or an alias of the device's `namespaces` table."""

    index: int | None = None
    uri: str | None = None
    alias: str | None = None

    def describe(self) -> str:
        if self.index is not None:
            return str(self.index)
        return self.alias if self.alias is not None else f"nsu={self.uri}"


NS0 = Namespace(index=0)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    namespace: Namespace
    kind: str  # "i", "s", "g", "b"
    identifier: int | str | uuid.UUID | bytes


@dataclass(frozen=True, slots=True)
class BrowsePath:
    """Path from the Root folder: each element is (namespace, browse name), followed by hierarchical references."""

    elements: tuple[tuple[Namespace, str], ...]


def _namespace(text: str) -> Namespace:
    text = text.strip()
    if text.isdigit():
        index = int(text)
        if index > 0xFFFF:
            raise ValueError(f"namespace index {index} is out of range 0..65535")
        return Namespace(index=index)
    if _ALIAS.match(text):
        return Namespace(alias=text)
    raise ValueError(f"namespace {text!r} is neither an index nor an alias from the device's namespaces table")


def parse_node_id(text: str) -> NodeAddress:
    """Parse an OPC UA NodeId string (Part 6 5.3.1.10 syntax, plus aliases); ValueError says what is wrong."""
    m = _NODE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a NodeId (use {NODE_HINT})")
    if m.group("nsu") is not None:
        ns = Namespace(uri=m.group("nsu"))
    elif m.group("ns") is not None:
        ns = _namespace(m.group("ns"))
    else:
        ns = NS0
    kind, ident = m.group("kind"), m.group("ident")
    value: int | str | uuid.UUID | bytes
    if kind == "i":
        if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
            raise ValueError(f"{text!r}: a numeric identifier (i=) is a whole number from 0 to 4294967295")
        value = int(ident)
    elif kind == "g":
        try:
            value = uuid.UUID(ident)
        except ValueError:
            raise ValueError(
                f"{text!r}: a GUID identifier (g=) looks like 09087e75-8e5e-499b-954f-f2a9603db28a") from None
    elif kind == "b":
        try:
            value = base64.b64decode(ident, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{text!r}: an opaque identifier (b=) must be base64") from None
    else:
        value = ident
    return NodeAddress(ns, kind, value)


def parse_browse_path(text: str) -> BrowsePath:
    """Parse `/Objects/2:Plant/plant:Temp`; a step without `NS:` is in namespace 0 (the standard nodes)."""
    if not text.startswith("/") or text.rstrip("/") == "":
        raise ValueError(f"{text!r} is not a browse path (use {PATH_HINT})")
    elements = []
    for step in text[1:].split("/"):
        if not step:
            raise ValueError(f"{text!r}: empty step (two '/' in a row, or a trailing '/')")
        prefix, sep, name = step.partition(":")
        if not sep:
            elements.append((NS0, step))
            continue
        if not name:
            raise ValueError(f"{text!r}: step {step!r} has no browse name after ':'")
        elements.append((_namespace(prefix), name))
    return BrowsePath(tuple(elements))


def aliases_used(addr: NodeAddress | BrowsePath) -> set[str]:
    if isinstance(addr, NodeAddress):
        return {addr.namespace.alias} if addr.namespace.alias else set()
    return {ns.alias for ns, _ in addr.elements if ns.alias}
