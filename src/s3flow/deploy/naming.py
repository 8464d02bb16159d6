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

from s3flow.errors import ConfigError

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


#: The logical ids one name of each kind gives (``{}``: the name in camel case), the
#: resource's own first, then those of what belongs to it (a policy, alarms, a worker
#: group's task definition and scaling). They are handed out together, so no other
#: name's id can be one of them (queues ``orders`` and ``orders-dlq-depth-alarm``).
ID_FORMS: dict[str, tuple[str, ...]] = {
    "Bucket": ("Bucket{}", "Bucket{}Policy"),
    "Queue": ("Queue{}", "Queue{}Policy", "Queue{}DepthAlarm", "Queue{}AgeAlarm"),
    "Table": ("Table{}",),
    "WorkerGroup": ("Service{}", "TaskDefinition{}", "ScalableTarget{}", "ScalingPolicy{}"),
}
#: Kinds named by AWS resource names, which may start with ``{project}-{branch}-``.
_NAMED_KINDS = frozenset({"Bucket", "Queue", "Table"})


@dataclass
class Naming:
    """The ``{project}-{branch}-`` of this config and the logical ids handed out so far."""

    project: str
    branch: str
    _stems: dict[str, str] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)

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

    def reserve(self, *logical_ids: str) -> None:
        """Keep the fixed ``logical_ids`` (the web task's) out of every name's ids."""
        self._taken.update(logical_ids)

    def logical_id(self, kind: str, name: str, form: str | None = None) -> str:
        """A stable logical id for the resource ``name`` of ``kind`` (``Queue``,
        ``Bucket``...), or for ``form``, another of the kind's :data:`ID_FORMS`
        (``"Queue{}DepthAlarm"``).

        Built from the name (a resource name without the ``{project}-{branch}-``
        prefix, so it does not change with the branch); when one of the name's ids is
        taken already (``a-b`` and ``a.b``; ``orders`` and ``orders-dlq-depth-alarm``),
        all of them get a short hash of the name.
        """
        forms = ID_FORMS[kind]
        chosen = forms[0] if form is None else form
        if chosen not in forms:
            raise ValueError(f"{chosen!r} is not one of the {kind} ids {forms}")
        return chosen.format(self.stem(kind, name))

    def stem(self, kind: str, name: str) -> str:
        """The camel-case part of the logical ids of ``name`` (see :meth:`logical_id`)."""
        key = f"{kind}\0{name}"
        if key not in self._stems:
            forms = ID_FORMS[kind]
            short = name
            if kind in _NAMED_KINDS and name.startswith(self.prefix):
                short = name[len(self.prefix) :]
            stem = camel(short) or "X"
            if self._clashes(forms, stem):
                stem += hashlib.sha256(name.encode()).hexdigest()[:6].upper()
            if self._clashes(forms, stem):
                raise ConfigError(
                    f"{kind.lower()} {name!r}: its CloudFormation logical ids clash with "
                    "another resource's even with a hash of the name; rename it"
                )
            self._stems[key] = stem
            self._taken.update(f.format(stem) for f in forms)
        return self._stems[key]

    def _clashes(self, forms: tuple[str, ...], stem: str) -> bool:
        return any(f.format(stem) in self._taken for f in forms)
