"""Schema unification for NDJSON -> Arrow: the widening rules, and casts to the result.

pyarrow's JSON reader infers, per file, one of: ``null``, ``bool``, ``int64``,
``double``, ``string``, ``timestamp[s]`` (which s3flow turns back into
``string``, see :func:`strings_for_timestamps`), ``list<T>`` and
``struct<...>``. Files of one manifest are unified field by field:

* a field missing from some files becomes a nullable column (null there);
* ``null`` + T -> T (a field that was null everywhere in one file);
* ``int64`` + ``double`` -> ``double``;
* ``struct`` + ``struct`` -> a struct with the union of the fields (recursively);
* ``list<A>`` + ``list<B>`` -> ``list<unify(A, B)>``;
* any other mix (``bool`` + ``int64``, ``string`` + ``double``, ``struct`` +
  ``string``...) -> ``string``; so does a field that is ``{}`` everywhere (an
  empty struct, which Parquet cannot store: :func:`writable_schema`). Scalars
  keep their JSON text in canonical form (``true``, ``42``, ``1.5``; a double
  with an integral value prints without ``.0``, at any depth; ``NaN``,
  ``Infinity``), objects and arrays become compact JSON text.

Before these rules apply, :mod:`.scan` reads an integer beyond int64 as the string
of its exact digits (pyarrow would make it a lossy ``double``), a number beyond
the double range (``1e400``, which pyarrow refuses) as an infinity, and an array whose
elements pyarrow cannot read together (``[1, "a"]``) as its compact JSON text.

Column order is the order of first appearance (manifest file order, then the
order in the file), so the result does not depend on how work was scheduled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "case_clashes",
    "cast_array",
    "cast_table",
    "hint_fits",
    "hint_schema",
    "integral_as_int",
    "strings_for_timestamps",
    "unify_schemas",
    "unify_types",
    "writable_schema",
]


def _is_nested(t: pa.DataType) -> bool:
    return bool(pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t))


def unify_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest type both ``a`` and ``b`` widen to, by the rules above."""
    if a.equals(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_integer(a) and pa.types.is_floating(b):
        return b
    if pa.types.is_floating(a) and pa.types.is_integer(b):
        return a
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        return pa.struct(_unify_fields([list(a), list(b)]))
    if pa.types.is_list(a) and pa.types.is_list(b):
        return pa.list_(unify_types(a.value_type, b.value_type))
    return pa.string()


def _unify_fields(field_lists: Iterable[Iterable[pa.Field]]) -> list[pa.Field]:
    merged: dict[str, pa.DataType] = {}
    for fields in field_lists:
        for f in fields:
            old = merged.get(f.name)
            merged[f.name] = f.type if old is None else unify_types(old, f.type)
    return [pa.field(name, t, nullable=True) for name, t in merged.items()]


def unify_schemas(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """Unify many schemas (in order) into one; every field nullable."""
    return pa.schema(_unify_fields(schemas))


def _writable(t: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return pa.string()
        return pa.struct([pa.field(f.name, _writable(f.type), nullable=True) for f in t])
    if pa.types.is_list(t):
        return pa.list_(_writable(t.value_type))
    return t


def writable_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every empty struct (a field that is ``{}`` in every file) as a
    string of JSON text (``"{}"``): Parquet has no struct without fields. Applied to a
    manifest's final schema only: a ``{}`` unified with ``{"x": 1}`` stays a struct."""
    return pa.schema([pa.field(f.name, _writable(f.type), nullable=True) for f in schema])


def case_clashes(fields: Iterable[pa.Field], where: str = "") -> list[str]:
    """Names (at any depth, as ``a.b``) that differ only in case: ``Key, key``.

    Kept as separate columns, as JSON has them; engines that match names without
    case (Spark, Hive, Athena) refuse such a file or mix the columns up.
    """
    found: list[str] = []
    seen: dict[str, list[str]] = {}
    for f in fields:
        seen.setdefault(f.name.casefold(), []).append(where + f.name)
        t = f.type
        while pa.types.is_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        if pa.types.is_struct(t):
            found.extend(case_clashes(t, f"{where}{f.name}."))
    clashes = [", ".join(names) for names in seen.values() if len(names) > 1]
    return clashes + found


def _replace_timestamps(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _replace_timestamps(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(_replace_timestamps(t.value_type))
    return t


def strings_for_timestamps(schema: pa.Schema) -> pa.Schema | None:
    """``schema`` with every (nested) timestamp field as string; None if it has none.

    pyarrow infers ``timestamp[s]`` for ISO-8601-looking strings (also for a
    bare ``2024-01-01``), which would change the value's text, drop its zone
    designator and make the column's type depend on each file's luck. s3flow
    keeps such values as the strings they are: a file whose inferred schema
    has timestamps is read again with this schema.
    """
    out = pa.schema([pa.field(f.name, _replace_timestamps(f.type)) for f in schema])
    return None if out.equals(schema) else out


def _hintable(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return False
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(_hintable(f.type) for f in t)
    if pa.types.is_list(t):
        return _hintable(t.value_type)
    return True


def hint_schema(schema: pa.Schema) -> pa.Schema:
    """The part of ``schema`` usable as an explicit schema for the next file's read.

    Fields whose type says nothing (null, empty struct, list of null) are left
    to inference.
    """
    return pa.schema([f for f in schema if _hintable(f.type)])


def _value_fits(value: Any, t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return (
            isinstance(value, dict)
            and list(value) == [f.name for f in t]
            and all(_value_fits(value[f.name], f.type) for f in t)
        )
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not isinstance(value, list):
            return False
        if not value:  # an empty list says nothing about nested element order
            return not (pa.types.is_struct(t.value_type) or pa.types.is_list(t.value_type))
        return _value_fits(value[0], t.value_type)
    if pa.types.is_floating(t):  # an int64 column would be read as double
        return isinstance(value, float)
    return True


def hint_fits(hint: pa.Schema, first: Any) -> bool:
    """Whether reading with ``hint`` gives the columns (and order) of a read without it.

    A hint is another unit's schema: used as the explicit schema, its fields
    come first, in its order, and fields the unit lacks are added as nulls.
    That is only the same as the unit's own inferred schema when the unit's
    first record has exactly the hint's fields, in the hint's order (nested
    objects too); pyarrow then appends later fields in order of appearance,
    as it does without a hint, and a type it accepts under the hint is the
    unit's own type or its widening (``int64`` read as ``double``), which
    unification reaches anyway. Otherwise the unit is read without the hint,
    so the manifest's column order never depends on which file a worker
    process happened to read before (the hint is a parsing speed-up only).
    """
    if not isinstance(first, dict) or list(first) != hint.names:
        return False
    return all(_value_fits(first[f.name], f.type) for f in hint)


# --- casts -------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _has_floats(t: pa.DataType) -> bool:
    if pa.types.is_floating(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_floats(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_floats(t.value_type)
    return False


#: Below this an integral double's repr ends in ``.0``; from it on it has an exponent.
_REPR_EXPONENT_AT = 1e16


def integral_as_int(value: Any) -> Any:
    """``value`` with each integral double written as an integer (``1.0`` -> ``1``)."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _REPR_EXPONENT_AT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: integral_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_as_int(v) for v in value]
    return value


def _to_json_text(arr: pa.Array) -> pa.Array:
    """Nested values as compact JSON text (null stays null; an integral double prints
    without ``.0``, NaN and infinities as ``NaN``, ``Infinity``, ``-Infinity``)."""
    values = arr.to_pylist()
    if _has_floats(arr.type):
        values = [integral_as_int(v) for v in values]
    out = [
        None
        if v is None
        else json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        for v in values
    ]
    return pa.array(out, type=pa.string())


def _double_text(arr: pa.Array) -> pa.Array:
    """Doubles as text (``3``, ``1.5``, ``1e+20``); NaN and infinities spelled as in
    JSON text (``NaN``, ``Infinity``, ``-Infinity``), not Arrow's ``nan``, ``inf``."""
    text = pc.cast(arr, pa.string())
    if pc.all(pc.is_finite(arr)).as_py() is not False:
        return text
    signed = pc.if_else(pc.less(arr, 0), "-Infinity", "Infinity")
    return pc.if_else(pc.is_nan(arr), "NaN", pc.if_else(pc.is_inf(arr), signed, text))


def cast_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast one array to ``target`` (a type :func:`unify_types` produced from its type)."""
    src = arr.type
    if src.equals(target):
        return arr
    if pa.types.is_null(src):
        return pa.nulls(len(arr), type=target)
    if pa.types.is_null(target):  # values read as another type where all are null
        return pa.nulls(len(arr))
    if pa.types.is_string(target):
        if _is_nested(src):
            return _to_json_text(arr)
        if pa.types.is_floating(src):
            return _double_text(arr)
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(target) and pa.types.is_integer(src):
        return pc.cast(arr, target, safe=False)
    if pa.types.is_struct(target) and pa.types.is_struct(src):
        names = {f.name for f in src}
        children = [
            cast_array(arr.field(f.name), f.type)
            if f.name in names
            else pa.nulls(len(arr), type=f.type)
            for f in target
        ]
        mask = arr.is_null() if arr.null_count else None
        return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)
    if pa.types.is_list(target) and pa.types.is_list(src):
        if arr.offset:  # from_arrays refuses a validity bitmap with sliced offsets
            arr = pa.concat_arrays([arr])
        values = cast_array(arr.values, target.value_type)
        mask = arr.is_null() if arr.null_count else None
        return pa.ListArray.from_arrays(arr.offsets, values, type=target, mask=mask)
    raise TypeError(f"cannot cast {src} to {target}")  # unify_types never asks for this


def cast_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (missing ones null), cast to its types."""
    if table.schema.equals(schema):
        return table
    n = table.num_rows
    have = set(table.column_names)
    columns: list[pa.ChunkedArray] = []
    for f in schema:
        if f.name not in have:
            columns.append(pa.chunked_array([pa.nulls(n, type=f.type)], type=f.type))
            continue
        col = table.column(f.name)
        if col.type.equals(f.type):
            columns.append(col)
        else:
            columns.append(
                pa.chunked_array([cast_array(c, f.type) for c in col.chunks], type=f.type)
            )
    return pa.Table.from_arrays(columns, schema=schema)
