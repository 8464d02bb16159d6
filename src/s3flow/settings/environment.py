"""The ``S3FLOW_*`` environment as a settings source: lists by index, and named in errors.

pydantic-settings reads ``S3FLOW_PIPELINES__0__CONCURRENCY=4`` as
``{"pipelines": {"0": {"concurrency": "4"}}}``, and its merge of the sources would
put that table in place of the file's whole ``[[pipelines]]`` list. Here a table
keyed by indices, under a list setting, is merged into the list below it
(:class:`IndexedEnvSource`): entry 0 of the file keeps its other keys and gets
``concurrency = 4``. An index one past the end adds an entry (in order: each a
whole entry); a gap, a key without an index, or an index under a list set as JSON
by the environment itself is a :class:`ConfigError` naming the variable.

:func:`env_variables`, :func:`owner` and :func:`covering` tell which source, and which
variable, set a key, for the loader's error messages (``s3flow.settings.loading``).
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from pydantic_settings.exceptions import SettingsError

from s3flow.errors import ConfigError

ENV_PREFIX = "S3FLOW_"
ENV_DELIMITER = "__"

#: Where a value sits in the settings: keys of tables, indices of lists.
Loc = tuple[int | str, ...]

_ABSENT = object()


def env_variables(fields: set[str] | None = None) -> dict[tuple[str, ...], str]:
    """The ``S3FLOW_*`` variables set: each one's path of keys (lower case) -> its name.

    ``S3FLOW_PIPELINES__0__CONCURRENCY`` -> ``("pipelines", "0", "concurrency")``.
    ``fields``: only variables whose first key is one of these (the settings'
    sections; ``S3FLOW_CONFIG`` names the file and is no setting).
    """
    out: dict[tuple[str, ...], str] = {}
    for name in os.environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        if fields is None or path[0] in fields:
            out[path] = name
    return out


def _at(data: Any, loc: Loc) -> Any:
    """The value at ``loc`` in ``data`` (a list index also as a table's key), or _ABSENT."""
    node = data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
        else:
            return _ABSENT
    return node


def env_name(loc: Loc) -> str:
    """The variable that sets the key at ``loc``: ``S3FLOW_PIPELINES__0__BUCKET``."""
    return ENV_PREFIX + ENV_DELIMITER.join(str(part) for part in loc).upper()


def has_value(data: Any, loc: Loc) -> bool:
    """True when ``data`` holds something at ``loc``."""
    return _at(data, loc) is not _ABSENT


def covering(loc: Loc, names: dict[tuple[str, ...], str]) -> str | None:
    """The variable whose path is the longest start of ``loc`` (``S3FLOW_PIPELINES``,
    holding JSON, covers every key inside it), or None."""
    path = tuple(str(part) for part in loc)
    for n in range(len(path), 0, -1):
        if path[:n] in names:
            return names[path[:n]]
    return None


def owner(loc: Loc, layers: list[tuple[str, Any]]) -> tuple[str, bool] | None:
    """Which of ``layers`` (``(name, data)``, highest first) gives the value at ``loc``.

    As the loader merges them: tables merge key by key, anything else (a list, a
    value) replaces what the layers below have; a table keyed by indices (the
    environment's) merges into the list below it. Returns the layer's name and
    whether it has ``loc`` itself (False: it replaced a list or table above ``loc``
    that lacks it); None when no layer has ``loc`` nor replaced anything above it.
    """
    for depth in range(1, len(loc) + 1):
        for name, data in layers:
            node = _at(data, loc[:depth])
            if node is _ABSENT:
                continue
            if depth == len(loc):
                return name, True
            if not isinstance(node, dict):
                return name, has_value(data, loc)
            break  # a table: the layers merge below it
        else:
            return None
    return None


def variables_inside(loc: Loc, names: dict[tuple[str, ...], str]) -> list[str]:
    """The variables that set keys inside the table or list at ``loc``."""
    path = tuple(str(part) for part in loc)
    return sorted(
        name for p, name in names.items() if len(p) > len(path) and p[: len(path)] == path
    )


# --- annotations: which settings are lists, tables, models ---------------------------------


def _plain(annotation: Any) -> Any:
    """``annotation`` without Annotated and without None in an optional union."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    plain = _plain(annotation)
    return plain if isinstance(plain, type) and issubclass(plain, BaseModel) else None


def _list_item(annotation: Any) -> Any:
    """The item type when ``annotation`` is a list, else None."""
    plain = _plain(annotation)
    return get_args(plain)[0] if get_origin(plain) is list and get_args(plain) else None


def _field(annotation: Any, key: str) -> Any:
    """The annotation of ``key`` inside ``annotation`` (a model's field, a dict's values)."""
    model = _model(annotation)
    if model is not None:
        info: FieldInfo | None = model.model_fields.get(key)
        return None if info is None else info.annotation
    plain = _plain(annotation)
    if get_origin(plain) is dict and len(get_args(plain)) == 2:
        return get_args(plain)[1]
    return None


def _complex(annotation: Any) -> bool:
    """A list, table or model: a value the environment gives as JSON."""
    plain = _plain(annotation)
    return _model(plain) is not None or get_origin(plain) in (list, dict)


# --- the source -----------------------------------------------------------------------------


class IndexedEnvSource(PydanticBaseSettingsSource):
    """pydantic-settings' environment source, its indexed tables merged into the lists below.

    ``below()`` is the data under the environment (the file's): an entry the
    environment names by index is that entry with the environment's keys over it.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: Callable[[], dict[str, Any]],
        below: Callable[[], dict[str, Any]],
    ) -> None:
        super().__init__(settings_cls)
        self._env = env
        self._below = below

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return apply_env(self.settings_cls, self._below(), read_env(self.settings_cls, self._env))


def read_env(settings_cls: type[BaseModel], source: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The environment source's data, its JSON decoded also under list indices.

    ConfigError, naming the variable, for one that is not valid JSON where JSON is
    needed, or an indexed one that cannot apply (under a list set as JSON).
    """
    names = env_variables(set(settings_cls.model_fields))
    try:
        raw = source()
    except SettingsError as exc:
        raise ConfigError(_json_error(exc, names)) from exc
    env: dict[str, Any] = {k: _decoded(_field(settings_cls, k), v) for k, v in raw.items()}
    _check_json_lists(env, names)
    return env


def apply_env(
    settings_cls: type[BaseModel], below: dict[str, Any], env: dict[str, Any]
) -> dict[str, Any]:
    """``env`` (from :func:`read_env`) with each table it keys by index merged into the
    list of ``below`` it names; ConfigError for an index it cannot apply."""
    names = env_variables(set(settings_cls.model_fields))
    return {
        key: _merge(_field(settings_cls, key), below.get(key), value, (key,), names)
        for key, value in env.items()
    }


def _decoded(annotation: Any, value: Any) -> Any:
    """``value`` with each string that sets a list, table or model parsed as JSON.

    pydantic-settings does so except under a list index (it cannot see the entry's
    type there). A string that is not JSON stays: validation names its variable.
    """
    if isinstance(value, dict):
        item = _list_item(annotation)
        if item is not None and value and all(k.isdigit() for k in value):
            return {k: _decoded(item, v) for k, v in value.items()}
        return {k: _decoded(_field(annotation, k), v) for k, v in value.items()}
    if isinstance(value, list):
        item = _list_item(annotation)
        return [_decoded(item, v) for v in value]
    if isinstance(value, str) and _complex(annotation):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _merge(
    annotation: Any,
    below: Any,
    value: Any,
    path: tuple[str, ...],
    names: dict[tuple[str, ...], str],
) -> Any:
    """``value`` (from the environment) over ``below``; indexed tables into lists."""
    item = _list_item(annotation)
    if item is not None and isinstance(value, dict) and value:
        if not all(k.isdigit() for k in value):
            raise ConfigError(_not_indexed(path, value, names))
        out = list(below) if isinstance(below, list) else []
        for k in sorted(value, key=int):
            i = int(k)
            if i > len(out):
                raise ConfigError(_gap(path, i, out, names))
            entry = _merge(item, out[i] if i < len(out) else None, value[k], (*path, k), names)
            if i < len(out):
                out[i] = entry
            else:
                out.append(entry)
        return out
    if isinstance(value, dict) and (below is None or isinstance(below, dict)):
        under = below or {}
        merged = dict(under)
        for k, v in value.items():
            merged[k] = _merge(_field(annotation, k), under.get(k), v, (*path, k), names)
        return merged
    return value


def _name(path: tuple[str, ...], names: dict[tuple[str, ...], str]) -> str:
    return names.get(path) or env_name(path)


def _entry_names(entries: list[Any]) -> str:
    shown = [
        f"[{i}]" + (f" ({e['name']!r})" if isinstance(e, dict) and e.get("name") else "")
        for i, e in enumerate(entries)
    ]
    return ", ".join(shown) or "none"


def _not_indexed(
    path: tuple[str, ...], value: dict[str, Any], names: dict[tuple[str, ...], str]
) -> str:
    key = next(k for k in value if not k.isdigit())
    var = _name((*path, key), names)
    field = ".".join(path)
    return (
        f"invalid configuration (environment): {var}: {field} is a list, so a variable "
        f"below {_name(path, names)} names an entry by its index first, e.g. "
        f"{_name(path, names)}{ENV_DELIMITER}0{ENV_DELIMITER}{key.upper()} for the first "
        f"entry; or set {_name(path, names)} to the whole list as JSON"
    )


def _gap(
    path: tuple[str, ...], index: int, entries: list[Any], names: dict[tuple[str, ...], str]
) -> str:
    var = next(
        (n for p, n in sorted(names.items()) if p[: len(path) + 1] == (*path, str(index))),
        _name((*path, str(index)), names),
    )
    field = ".".join(path)
    return (
        f"invalid configuration (environment): {var}: there is no {field}[{index}] to set "
        f"a key of: the list has {len(entries)} ({_entry_names(entries)}) and an index past "
        f"its end adds an entry only in order, the next being {len(entries)}; use an index "
        f"of the list, or set {_name(path, names)} to the whole list as JSON"
    )


def _check_json_lists(env: dict[str, Any], names: dict[tuple[str, ...], str]) -> None:
    """Refuse an indexed variable under a list the environment sets as JSON (dropped
    silently by pydantic-settings, which keeps the JSON)."""
    for path, name in sorted(names.items()):
        for j in range(1, len(path)):
            if path[j].isdigit() and isinstance(_at(env, path[:j]), list) and path[:j] in names:
                whole = names[path[:j]]  # (pydantic-settings kept it, dropped `name`)
                raise ConfigError(
                    f"invalid configuration (environment): {name} cannot change an entry "
                    f"of {whole}, which sets the whole list as JSON: put the key into "
                    f"{whole}'s JSON, or unset {whole} to change the file's entry by index"
                )


_FIELD = re.compile(r'field "([^"]+)"')


def _json_error(exc: SettingsError, names: dict[tuple[str, ...], str]) -> str:
    """The message of pydantic-settings' error for a variable that is not valid JSON."""
    found = _FIELD.search(str(exc))
    field = found.group(1) if found else ""
    suspects = sorted(n for p, n in names.items() if p[0] == field) or [f"{ENV_PREFIX}*"]
    why = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    return (
        f"invalid configuration (environment): {', '.join(suspects)}: a list or table set "
        f"by an environment variable must be JSON, and this is not{why}; e.g. "
        f'{ENV_PREFIX}WORKER=\'{{"log_level": "DEBUG"}}\' or '
        f"{ENV_PREFIX}JOBS__ALLOWED_EXTENSIONS='[\".txt\"]'; correct or unset it"
    )
