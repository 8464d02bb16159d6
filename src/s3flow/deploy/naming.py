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


#: The logical ids one name of each kind may give (``{}``: the name in camel case), the
#: resource's own first, then those of what may belong to it (a policy, alarms, a worker
#: group's task definition and scaling). A name keeps its plain ids unless one of those
#: the template has (:meth:`Naming.declare`) is another name's (queues ``orders-dlq``
#: with its depth alarm and ``orders-dlq-depth-alarm``).
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
    """The ``{project}-{branch}-`` of this config and the logical ids of its resources.

    Every id the template will have is declared first (:meth:`declare`, :meth:`reserve`);
    the first id asked for settles them all at once, so they do not depend on the
    order names are declared or asked for in.
    """

    project: str
    branch: str
    _declared: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _reserved: set[str] = field(default_factory=set)
    _stems: dict[tuple[str, str], str] | None = None

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
        self._unsettled()
        self._reserved.update(logical_ids)

    def declare(self, kind: str, name: str, *forms: str) -> None:
        """The template has the resource ``name`` of ``kind`` and the ``forms`` (other
        :data:`ID_FORMS` of the kind, ``"Queue{}DepthAlarm"``) that belong to it.

        Only declared ids are kept apart: a form a name does not have (a DLQ has no
        queue policy) cannot clash. Declaring a name again adds its ``forms``.
        """
        self._unsettled()
        kind_forms = ID_FORMS[kind]
        for form in forms:
            if form not in kind_forms:
                raise ValueError(f"{form!r} is not one of the {kind} ids {kind_forms}")
        self._declared.setdefault((kind, name), {kind_forms[0]}).update(forms)

    def logical_id(self, kind: str, name: str, form: str | None = None) -> str:
        """The stable logical id of the resource ``name`` of ``kind`` (``Queue``,
        ``Bucket``...), or of ``form``, another of the kind's :data:`ID_FORMS`
        (``"Queue{}DepthAlarm"``); both declared (:meth:`declare`).

        Built from the name (a resource name without the ``{project}-{branch}-``
        prefix, so it does not change with the branch); when one of the ids the name
        has is another name's too (``a-b`` and ``a.b``; ``orders-dlq``'s depth alarm and
        ``orders-dlq-depth-alarm``), all the ids of the name that sorts later get a
        short hash of the name.
        """
        forms = ID_FORMS[kind]
        chosen = forms[0] if form is None else form
        if chosen not in forms:
            raise ValueError(f"{chosen!r} is not one of the {kind} ids {forms}")
        if chosen not in self._declared.get((kind, name), ()):
            raise ValueError(f"{kind} {name!r}: {chosen!r} was not declared")
        return chosen.format(self.stem(kind, name))

    def stem(self, kind: str, name: str) -> str:
        """The camel-case part of the logical ids of ``name`` (see :meth:`logical_id`)."""
        stems = self._settle()
        if (kind, name) not in stems:
            raise ValueError(f"{kind} {name!r} was not declared")
        return stems[(kind, name)]

    def declared_names(self) -> list[tuple[str, str]]:
        """(kind, name) of every resource declared (:meth:`declare`)."""
        return list(self._declared)

    def declared_ids(self) -> set[str]:
        """Every logical id declared (:meth:`declare`), as settled."""
        stems = self._settle()
        return {form.format(stems[key]) for key, forms in self._declared.items() for form in forms}

    def _unsettled(self) -> None:
        if self._stems is not None:
            raise ValueError("the logical ids are settled: declare every resource first")

    def _settle(self) -> dict[tuple[str, str], str]:
        """Every declared name's stem, names taken in sorted order (not declaration's)."""
        if self._stems is not None:
            return self._stems
        stems: dict[tuple[str, str], str] = {}
        taken = set(self._reserved)
        for (kind, name), declared in sorted(self._declared.items()):
            forms = [f for f in ID_FORMS[kind] if f in declared]
            short = name
            if kind in _NAMED_KINDS and name.startswith(self.prefix):
                short = name[len(self.prefix) :]
            stem = camel(short) or "X"
            if _clashes(forms, stem, taken):
                stem += hashlib.sha256(name.encode()).hexdigest()[:6].upper()
            if _clashes(forms, stem, taken):
                raise ConfigError(
                    f"{kind.lower()} {name!r}: its CloudFormation logical ids clash with "
                    "another resource's even with a hash of the name; rename it"
                )
            stems[(kind, name)] = stem
            taken.update(f.format(stem) for f in forms)
        self._stems = stems
        return stems


def _clashes(forms: list[str], stem: str, taken: set[str]) -> bool:
    return any(f.format(stem) in taken for f in forms)
