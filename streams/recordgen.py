"""Generate the Python type of every Avro record (``streams/avro_types.py``) from ``schemas/*.avsc``.

    lensflow schemas --generate                     # rewrite streams/avro_types.py
    python -m lensflow.streams.recordgen [--check]  # the same; --check: exit 1 when it is out of date

``tests/unit/test_records_types.py`` (and ``lensflow schemas --check``) regenerate the module in memory
and fail when it differs from the committed one: a schema and its type cannot disagree unnoticed.

Every named Avro type becomes one Python type of the same name: a record a ``dataclass`` (slots,
keyword-only: a misspelt or missing field fails where the record is built, not when it is encoded),
an enum a ``StrEnum`` (its members equal their symbols, so they encode and compare as strings). Nested
records (``ObjectsResult.detections`` → ``Detection``) get their own type; ``["null", X]`` is
``X | None``; arrays are lists, maps dicts; ``timestamp-millis`` is a ``datetime`` (fastavro also takes
epoch milliseconds); defaults are the schema's. Each record type has ``to_avro()`` (the dict fastavro
writes: plain field reads, lists of primitives passed as they are, not copied) and ``from_avro()``
(from the dict fastavro reads). See the generated module's docstring for why dataclasses.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codec import NAMESPACE, schemas_dir

#: Where the generated module lives (the runtime's base: it imports nothing from lensflow).
MODULE = Path(__file__).resolve().parent / "avro_types.py"

#: Names a record field may not take: the base class's own attributes.
RESERVED = {"to_avro", "from_avro", "get", "AVRO_NAME", "AVRO_FIELDS"}

_PRIMITIVES = {"null": "None", "boolean": "bool", "int": "int", "long": "int", "float": "float", "double": "float",
               "bytes": "bytes", "string": "str"}
_LOGICAL = {"timestamp-millis": "datetime", "timestamp-micros": "datetime", "local-timestamp-millis": "datetime",
            "local-timestamp-micros": "datetime", "date": "date", "time-millis": "time", "time-micros": "time",
            "uuid": "str", "decimal": "Decimal"}


class SchemaError(ValueError):
    """A schema the generator cannot turn into Python types (a name clash, a field named like a keyword)."""


@dataclass
class Named:
    fullname: str
    kind: str  # record | enum | fixed
    schema: dict
    namespace: str


#: Where a conversion expression puts its value.
V = "@V@"


@dataclass
class PyType:
    """How one Avro type is written in Python: its annotation, and the expressions converting a value
    to what fastavro writes (``to``) and from what fastavro reads (``frm``), the value written ``V``;
    None: as it is."""

    hint: str
    to: str | None = None
    frm: str | None = None


def _put(template: str | None, value: str) -> str:
    """``template`` applied to the expression ``value`` (``value`` itself without one)."""
    return value if template is None else template.replace(V, value)


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name else f"{namespace}.{name}" if namespace else name


def _short(fullname: str) -> str:
    return fullname.rsplit(".", 1)[-1]


class Generator:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or schemas_dir()
        self.named: dict[str, Named] = {}
        for path in sorted(self.directory.glob(f"{NAMESPACE}.*.avsc")):
            raw = json.loads(path.read_text())
            self._register(raw, raw.get("namespace", NAMESPACE))
        shorts: dict[str, str] = {}
        for full in self.named:
            if _short(full) in shorts:
                raise SchemaError(f"{full} and {shorts[_short(full)]} would both be the Python type {_short(full)}")
            shorts[_short(full)] = full

    def _register(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for s in schema:
                self._register(s, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                full = _fullname(schema["name"], schema.get("namespace", namespace))
                ns = full.rsplit(".", 1)[0] if "." in full else ""
                if full in self.named and self.named[full].schema != schema:
                    raise SchemaError(f"{full} is defined twice, differently")
                self.named[full] = Named(full, "record" if kind == "error" else kind, schema, ns)
                for f in schema.get("fields", []):
                    self._register(f["type"], ns)
            elif kind == "array":
                self._register(schema["items"], namespace)
            elif kind == "map":
                self._register(schema["values"], namespace)

    # --- types --------------------------------------------------------------------------------
    def pytype(self, schema: Any, namespace: str) -> PyType:
        if isinstance(schema, list):
            members = [self.pytype(s, namespace) for s in schema]
            if len(schema) == 2 and "null" in schema:
                other = members[1 - schema.index("null")]
                to = other.to if other.to in (None, f"_rec({V})") else f"None if {V} is None else {other.to}"
                frm = other.frm
                if frm is not None:  # F(V) -> _opt(F, V): the value read once
                    frm = f"_opt({frm[:-len(f'({V})')]}, {V})" if frm.endswith(f"({V})") and frm.count(V) == 1 \
                        else f"None if {V} is None else {frm}"
                return PyType(f"{other.hint} | None", to, frm)
            hint = " | ".join(dict.fromkeys([*(m.hint for m in members if m.hint != "None"), *(
                ["None"] if "null" in schema else [])]))
            if all(m.to is None for m in members):
                return PyType(hint)
            return PyType(hint, f"_any({V})")  # read back as it is: which branch a dict is cannot be told
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                return self.pytype(_fullname(schema["name"], schema.get("namespace", namespace)), namespace)
            if kind == "array":
                item = self.pytype(schema["items"], namespace)
                return PyType(f"list[{item.hint}]", item.to and f"[{_put(item.to, 'x')} for x in {V}]",
                              item.frm and f"[{_put(item.frm, 'x')} for x in {V}]")
            if kind == "map":
                item = self.pytype(schema["values"], namespace)
                return PyType(f"dict[str, {item.hint}]", item.to and f"{{k: {_put(item.to, 'x')} for k, x in {V}.items()}}",
                              item.frm and f"{{k: {_put(item.frm, 'x')} for k, x in {V}.items()}}")
            if schema.get("logicalType") in _LOGICAL:
                return PyType(_LOGICAL[schema["logicalType"]])
            return self.pytype(kind, namespace)
        if schema in _PRIMITIVES:
            return PyType(_PRIMITIVES[schema])
        full = _fullname(schema, namespace)
        if full not in self.named and schema in self.named:
            full = schema
        named = self.named.get(full)
        if named is None:
            raise SchemaError(f"unknown type {schema!r}")
        name = _short(full)
        if named.kind == "record":
            return PyType(name, f"_rec({V})", f"{name}.from_avro({V})")
        if named.kind == "enum":
            return PyType(name, None, f"{name}({V})")
        return PyType("bytes")  # fixed

    def default(self, schema: Any, value: Any, namespace: str) -> tuple[str, bool]:
        """(Python expression of an Avro default, whether it needs a factory)."""
        if isinstance(schema, list):
            schema = schema[0]  # a union's default is of its first branch
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            named = self.named[_fullname(schema, namespace) if _fullname(schema, namespace) in self.named else schema]
            if named.kind == "enum":
                return f"{_short(named.fullname)}.{_member(value)}", False
            if named.kind == "record":
                return f"{_short(named.fullname)}.from_avro({_literal(value)})", True
            return repr(value.encode("latin-1")), False  # Avro's JSON form of bytes: code points 0-255
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(schema, dict) and kind in ("record", "error", "enum", "fixed"):
            return self.default(_fullname(schema["name"], schema.get("namespace", namespace)), value, namespace)
        if kind in ("array", "map"):
            if value in ([], {}):
                return ("list" if kind == "array" else "dict"), True
            return _put(self.pytype(schema, namespace).frm, _literal(value)), True
        if kind in ("bytes", "fixed"):
            return repr(value.encode("latin-1")), False  # Avro's JSON form of bytes: code points 0-255
        if kind in ("float", "double"):
            return repr(float(value)), False
        return (_q(value) if isinstance(value, str) else repr(value)), False

    # --- code ---------------------------------------------------------------------------------
    def enum_code(self, n: Named) -> list[str]:
        name = _short(n.fullname)
        lines = ["", "", f"class {name}(StrEnum):", *_doc(n.schema.get("doc") or f"Avro enum {n.fullname}.")]
        lines.append("")
        for sym in n.schema["symbols"]:
            lines.append(f"    {_member(sym)} = {_q(sym)}")
        return lines

    def record_code(self, n: Named) -> list[str]:
        name = _short(n.fullname)
        fields = n.schema["fields"]
        lines = ["", "", "@_dc.dataclass(slots=True, kw_only=True)", f"class {name}(AvroRecord):",
                 *_doc(n.schema.get("doc") or f"Avro record {n.fullname}."), "",
                 f"    AVRO_NAME: ClassVar[str] = {_q(n.fullname)}",
                 "    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("
                 + _join([_q(f["name"]) for f in fields], 46) + ("," if len(fields) == 1 else "") + ")", ""]
        to_parts, from_parts = [], []
        for f in fields:
            fname = f["name"]
            if not fname.isidentifier() or keyword.iskeyword(fname) or fname in RESERVED:
                raise SchemaError(f"{n.fullname}.{fname}: not usable as a Python field name")
            t = self.pytype(f["type"], n.namespace)
            if f.get("doc"):
                lines += [f"    #: {w}" for w in textwrap.wrap(" ".join(f["doc"].split()), 104)]
            if "default" in f:
                expr, factory = self.default(f["type"], f["default"], n.namespace)
                if factory:
                    value = expr if expr in ("list", "dict") else f"lambda: {expr}"
                    lines.append(f"    {fname}: {t.hint} = _dc.field(default_factory={value})")
                else:
                    lines.append(f"    {fname}: {t.hint} = {expr}")
                # from_avro converts what it reads: its default is the schema's own (Avro-shaped) value
                got = f"d.get({_q(fname)}, {_literal(f['default']) if t.frm else _fresh(expr, factory)})"
            else:
                lines.append(f"    {fname}: {t.hint}")
                got = f"d[{_q(fname)}]"
            to_parts.append(f"{_q(fname)}: {_put(t.to, 'self.' + fname)}")
            from_parts.append(f"{fname}={_put(t.frm, got)}")
        lines += ["", "    def to_avro(self) -> dict[str, Any]:", "        return {" + _join(to_parts, 16) + "}", "",
                  "    @classmethod", f"    def from_avro(cls, d: Mapping[str, Any]) -> {name}:",
                  "        return cls(" + _join(from_parts, 19) + ")"]
        return lines

    def module(self) -> str:
        enums = sorted((n for n in self.named.values() if n.kind == "enum"), key=lambda n: _short(n.fullname))
        records = sorted((n for n in self.named.values() if n.kind == "record"), key=lambda n: _short(n.fullname))
        body: list[str] = []
        for n in enums:
            body += self.enum_code(n)
        for n in records:
            body += self.record_code(n)
        used = {hint for named in records for f in named.schema["fields"]
                for hint in _LOGICAL.values() if re.search(rf"\b{hint}\b", self.pytype(f["type"], named.namespace).hint)}
        imports = "".join(f"from {module} import {', '.join(sorted(names & used))}\n"
                          for module, names in (("datetime", {"date", "datetime", "time"}), ("decimal", {"Decimal"}))
                          if names & used)
        out = [HEADER.replace("@LOGICAL_IMPORTS@", imports).rstrip("\n"), *body]
        out += ["", "", "#: Every record type by its Avro full name.",
                "RECORDS: dict[str, type[AvroRecord]] = {"]
        out += [f"    {_q(n.fullname)}: {_short(n.fullname)}," for n in records]
        out += ["}", "", "#: Every enum by its Avro full name.", "ENUMS: dict[str, type[StrEnum]] = {"]
        out += [f"    {_q(n.fullname)}: {_short(n.fullname)}," for n in enums]
        out += ["}", "", "", "def record_type(name: str) -> type[AvroRecord]:",
                '    """The generated type of the record ``name`` (short, e.g. ``ObjectsResult``, or full)."""',
                f"    return RECORDS[name if \".\" in name else {_q(NAMESPACE + '.')} + name]", ""]
        return "\n".join(out)


def _literal(value: Any) -> str:
    """A JSON value as a Python literal."""
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_q(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _q(text: str) -> str:
    """A string literal, in double quotes."""
    return json.dumps(text, ensure_ascii=False)


def _member(symbol: str) -> str:
    name = symbol.upper()
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SchemaError(f"enum symbol {symbol!r} is not usable as a Python name")
    return name


def _fresh(expr: str, factory: bool) -> str:
    """A default as a value for ``d.get``: factories called (a new list each time)."""
    if not factory:
        return expr
    return {"list": "[]", "dict": "{}"}.get(expr, expr)


def _join(parts: list[str], indent: int, width: int = 110) -> str:
    lines, line = [], ""
    for p in parts:
        piece = (", " if line else "") + p
        if line and indent + len(line) + len(piece) > width:
            lines.append(line + ",")
            line = p
        else:
            line += piece
    lines.append(line)
    return ("\n" + " " * indent).join(lines)


def _doc(text: str) -> list[str]:
    text = " ".join(text.split()).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text += " "
    wrapped = textwrap.wrap(text, 104)
    if len(wrapped) == 1 and len(wrapped[0]) <= 98:
        return [f'    """{wrapped[0]}"""']
    return ['    """' + wrapped[0], *(f"    {w}" for w in wrapped[1:]), '    """']


HEADER = '''\
# GENERATED FILE: do not edit. Made from schemas/lensflow.v1.*.avsc by streams/recordgen.py;
# regenerate with `lensflow schemas --generate` (or `python -m lensflow.streams.recordgen`) after a schema
# changes. tests/unit/test_records_types.py fails while this file and the schemas disagree.
"""One Python type per Avro record and enum of lensflow (``schemas/``), for the code that builds records.

Records are ``dataclass``-es (``slots``, keyword-only), not ``TypedDict``-s: a TypedDict is a plain dict
at run time, so a misspelt or missing field went unnoticed until fastavro refused the record at encode
time, on another line, in another task. A dataclass refuses it where the record is built. Stages build
these types and hand them to the codec, which writes ``to_avro()`` (the dict fastavro takes: one
read per field, lists of primitives such as vectors passed as they are, not copied; nested records
converted by their own ``to_avro``). A nested record may also be a dict shaped like the schema (the
join embeds the records it decoded as they are): it is passed to fastavro unchanged. ``from_avro()``
builds a type from what fastavro decodes.

Decoding stays dict-based: ``Codec.decode`` returns fastavro's dicts, which the join, the read side and
the CLI read as they always did. So that code reading a record reads a decoded one and a built one
alike, a record also answers ``rec["field"]``, ``rec.get("field")`` and ``"field" in rec``
(read-only: set attributes).

Enums are ``StrEnum``-s: members equal their symbols (``StageStatus.OK == "ok"``), which is what
fastavro writes and what decoded records hold.
"""

from __future__ import annotations

import dataclasses as _dc
@LOGICAL_IMPORTS@from enum import StrEnum
from typing import Any, ClassVar, Mapping


class AvroRecord:
    """Base of every generated record type."""

    __slots__ = ()
    AVRO_NAME: ClassVar[str] = ""  # the Avro full name, e.g. "lensflow.v1.ObjectsResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ()  # field names, in schema order

    def to_avro(self) -> dict[str, Any]:
        """The dict fastavro writes."""
        raise NotImplementedError

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> AvroRecord:
        """The record from the dict fastavro reads (or one shaped like it)."""
        raise NotImplementedError

    # read like a decoded record (a dict) --------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in self.AVRO_FIELDS:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.AVRO_FIELDS else default

    def __contains__(self, key: object) -> bool:
        return key in self.AVRO_FIELDS


def _rec(v: Any) -> Any:
    """A nested record as fastavro writes it: a generated type converted, a dict (or None) as it is."""
    return v.to_avro() if isinstance(v, AvroRecord) else v


def _opt(f: Any, v: Any) -> Any:
    """``f(v)``, or None for None."""
    return None if v is None else f(v)


def _any(v: Any) -> Any:
    """A value of a union of several types as fastavro writes it."""
    if isinstance(v, AvroRecord):
        return v.to_avro()
    if isinstance(v, list):
        return [_any(x) for x in v]
    if isinstance(v, dict):
        return {k: _any(x) for k, x in v.items()}
    return v
'''


def generate(directory: Path | None = None) -> str:
    """The source of ``avro_types.py`` for the schemas in ``directory`` (default: lensflow's)."""
    return Generator(directory).module()


def stale(directory: Path | None = None, module: Path = MODULE) -> bool:
    """Whether ``module`` differs from what the schemas generate."""
    return not module.exists() or module.read_text() != generate(directory)


def write(directory: Path | None = None, module: Path = MODULE) -> bool:
    """Write the module; whether it changed."""
    source = generate(directory)
    if module.exists() and module.read_text() == source:
        return False
    module.write_text(source)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        if stale():
            print(f"{MODULE} is out of date: run `lensflow schemas --generate`", file=sys.stderr)
            return 1
        return 0
    print(f"{'wrote' if write() else 'unchanged:'} {MODULE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
