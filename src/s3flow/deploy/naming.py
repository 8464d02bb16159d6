"""Names, logical ids and intrinsic functions of the CloudFormation export.

Every name in the template is written the way ``Fn::Sub`` reads it: a literal
``${`` is escaped as ``${!`` and the ``{project}-{branch}-`` part of a name
(DESIGN.md: resource names follow ``{project}-{branch}-{role}``) becomes
``${Project}-${Branch}-``, so one template serves every branch through its
``Project`` and ``Branch`` parameters. A string that needs no substitution stays
a plain string.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

#: A fragment of a template: a string, number, list, dict or an intrinsic function.
Json = Any

_BOUNDARY = r"(?<![A-Za-z0-9_.-])"


def sub(text: str) -> Json:
    """``{"Fn::Sub": text}`` when ``text`` has a ``${...}``, else ``text`` itself."""
    return {"Fn::Sub": text} if "${" in text else text


def ref(logical_id: str) -> Json:
    """``{"Ref": logical_id}``."""
    return {"Ref": logical_id}


def get_att(logical_id: str, attribute: str) -> Json:
    """``{"Fn::GetAtt": [logical_id, attribute]}``."""
    return {"Fn::GetAtt": [logical_id, attribute]}


def if_(condition: str, then: Json, otherwise: Json) -> Json:
    """``{"Fn::If": [condition, then, otherwise]}``."""
    return {"Fn::If": [condition, then, otherwise]}


NO_VALUE: Json = {"Ref": "AWS::NoValue"}


def camel(text: str) -> str:
    """``counts-events.fifo`` -> ``CountsEventsFifo`` (letters and digits only)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text))


@dataclass
class Naming:
    """The ``{project}-{branch}-`` of this config and the logical ids handed out so far."""

    project: str
    branch: str
    _ids: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """``{project}-{branch}-``: the part of a name the parameters replace."""
        return f"{self.project}-{self.branch}-"

    def text(self, value: str) -> str:
        """``value`` in ``Fn::Sub`` syntax: ``${`` escaped, the prefix parametrized."""
        escaped = value.replace("${", "${!")
        pattern = _BOUNDARY + re.escape(self.prefix)
        return re.sub(pattern, "${Project}-${Branch}-", escaped)

    def name(self, value: str) -> Json:
        """A resource name as the template writes it (see :meth:`text`)."""
        return sub(self.text(value))

    def s3_arn(self, bucket: str, key_pattern: str | None = None) -> Json:
        """The ARN of ``bucket`` (``key_pattern``: of its objects matching it)."""
        tail = "" if key_pattern is None else "/" + key_pattern
        return sub("arn:${AWS::Partition}:s3:::" + self.text(bucket + tail))

    def logical_id(self, kind: str, name: str) -> str:
        """A stable logical id for the resource ``name`` of ``kind`` (``Queue``, ``Bucket``...).

        Built from the name without the ``{project}-{branch}-`` prefix, so it does
        not change with the branch; a clash (``a-b`` and ``ab``) gets a short hash.
        """
        key = f"{kind}\0{name}"
        if key in self._ids:
            return self._ids[key]
        short = name[len(self.prefix) :] if name.startswith(self.prefix) else name
        candidate = kind + (camel(short) or "X")
        if candidate in self._ids.values():
            candidate += hashlib.sha256(name.encode()).hexdigest()[:6].upper()
        self._ids[key] = candidate
        return candidate
