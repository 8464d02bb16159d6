"""The Processor protocol and what a processor gets to work with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import (
    Any,
    ClassVar,
    Generic,
    Protocol,
    TypeVar,
    cast,
    get_args,
    get_origin,
    runtime_checkable,
)

from pydantic import BaseModel, ValidationError

from s3flow.errors import ConfigError
from s3flow.events import ObjectEvent
from s3flow.objects import ObjectReader, open_object
from s3flow.settings import AwsSettings, PipelineSettings, error_lines
from s3flow.sinks.base import Sink
from s3flow.state.base import StateStore
from s3flow.state.records import FileRecord


@dataclass
class Result:
    """What a processor did for one object."""

    outputs: list[str] = field(default_factory=list)
    counters: dict[str, int | float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessContext:
    """Everything a processor needs for one object."""

    event: ObjectEvent
    pipeline: str
    worker_id: str
    s3: Any
    sink: Sink
    report_progress: Callable[[int], None] = lambda n: None
    #: The worker's state store (None when ``state.url = "none"``): checkpoints,
    #: locks and records a processor keeps beyond the engine's own file lifecycle.
    store: StateStore | None = None
    #: The pipeline's ``max_uncompressed_bytes`` (None: no limit).
    max_uncompressed_bytes: int | None = None
    #: Tells the worker the input is read and only output writes are left: the object
    #: then gives its processing slot to the next message (it stays leased and is
    #: settled as before). A reader from :meth:`open` calls it when closed; a processor
    #: reading its input otherwise may call it itself. Calling it again does nothing.
    reading_done: Callable[[], None] = lambda: None

    async def open(self, *, final: bool = True) -> ObjectReader:
        """Open the event's object as a decompressing stream (iterate it with ``async for``).

        A compressed object that decompresses to more than ``max_uncompressed_bytes``
        raises :class:`~s3flow.errors.TooLargeError` while it is read. Closing the
        reader calls :attr:`reading_done`, unless ``final=False``: for a processor
        whose main work comes after this read (a manifest read before a compaction).
        An event that names its upload by eTag reads only that upload: the object
        overwritten since raises :class:`~s3flow.errors.ObjectChangedError` (the event
        is superseded and acknowledged without output; the newer upload's event runs).
        """
        reader = await open_object(
            self.s3,
            self.event.bucket,
            self.event.key,
            version_id=self.event.version_id,
            max_uncompressed_bytes=self.max_uncompressed_bytes,
            if_match=self.event.if_match,
        )
        if final:
            reader.on_close = self.reading_done
        return reader


@dataclass
class BundleContext:
    """Everything a bundling step of an upload job gets: all of the step's inputs at once.

    A processor with an ``async def bundle(self, ctx: BundleContext) -> Result``
    method (the built-in ``zip``) is called once per job step with every input,
    instead of once per object.
    """

    job_id: str
    inputs: list[ObjectEvent]
    s3: Any
    sink: Sink
    report_progress: Callable[[int], None] = lambda n: None

    async def open(self, event: ObjectEvent) -> ObjectReader:
        """Open one input as a decompressing stream (only its event's upload, as
        :meth:`ProcessContext.open`)."""
        return await open_object(
            self.s3, event.bucket, event.key, version_id=event.version_id, if_match=event.if_match
        )

    async def open_raw(self, event: ObjectEvent) -> ObjectReader:
        """Open one input as stored: its bytes exactly as they are, never decompressed.

        For a step that keeps its inputs' content as it is (``zip`` stores ``a.csv.gz``
        as that gzip file). The read is of the event's version; ``reader.info.size`` is
        the stored size. A missing object raises ObjectMissingError, other errors are
        translated like :func:`~s3flow.objects.open_object`'s.
        """
        return await open_object(
            self.s3,
            event.bucket,
            event.key,
            version_id=event.version_id,
            raw=True,
            if_match=event.if_match,
        )


@dataclass
class PipelineContext:
    """A pipeline's live parts, given once to :meth:`BaseProcessor.start`.

    For processors that keep work beyond one object: background tasks (the
    manifest builder's age-trigger sealer), connections, topics to create.
    """

    pipeline: str
    bucket: str  # the pipeline's source bucket
    worker_id: str
    s3: Any
    sink: Sink
    store: StateStore | None = None
    aws: AwsSettings | None = None  # the settings ``s3`` was built from (None: defaults)
    sqs: Any = None  # the worker's SQS client (the jobs bridge queues jobs with it)


@runtime_checkable
class Processor(Protocol):
    """Turns one object into outputs.

    Implementations are constructed once per pipeline with the pipeline's
    ``options`` table and must be safe to call concurrently. ``process`` returns
    only after its outputs are durable; it raises an :mod:`s3flow.errors`
    exception (classified retryable / permanent) on failure. Any other
    exception is treated as retryable.

    ``cpu_bound = True`` makes the ``pool`` executor (a process pool) the
    processor's default. Optional class attributes (see :class:`BaseProcessor`):
    ``executors`` (where it can run), ``output_content_type`` (checked by the
    worker's output verification) and ``verified_by_write`` (its own writes need no
    read-back).
    """

    name: ClassVar[str]
    cpu_bound: ClassVar[bool]

    async def process(self, ctx: ProcessContext) -> Result:
        """Process ``ctx.event``'s object and write its outputs through ``ctx.sink``."""
        ...


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(processor: str, model: type[OptionsT], options: dict[str, Any]) -> OptionsT:
    """Validate a pipeline's ``options`` table against a processor's pydantic model.

    Raises ConfigError naming every bad key; an unknown key lists the known ones
    (give the model ``extra="forbid"``).
    """
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        lines = error_lines(
            exc,
            lambda loc: ".".join(str(p) for p in loc) or "<options>",
            f"unknown option (known: {', '.join(sorted(model.model_fields))})",
        )
        header = f"processor {processor!r}: invalid options:"
        raise ConfigError("\n".join([header, *lines])) from exc


class BaseProcessor:
    """Convenience base: stores options, not CPU-bound, no-op lifecycle hooks."""

    name: ClassVar[str] = "base"
    #: CPU-bound processors run on the ``pool`` executor unless a setting says otherwise
    #: (the worker's event loop stays free for I/O).
    cpu_bound: ClassVar[bool] = False
    #: Executors this processor can run on (``inline``, ``pool``, ``subprocess``, ``ecs``,
    #: ``batch``). None = derived: a processor with its own ``start``/``stop`` hooks keeps
    #: pipeline-level state that lives in the worker, so it runs only ``inline``; any
    #: other runs anywhere (each run builds it afresh from its options).
    executors: ClassVar[tuple[str, ...] | None] = None
    #: The Content-Type every output of this processor has (e.g. ``application/pdf``):
    #: the worker's output verification checks it. None = not checked.
    output_content_type: ClassVar[str | None] = None
    #: True: an output this processor writes through ``ctx.sink`` on the ``inline``
    #: executor is verified by the write's own answer (S3 acknowledged it: its size and
    #: Content-Type), not by a HEAD. Set it only if the processor never changes or
    #: removes an output once written. Outputs written any other way are still fetched.
    #: ``ctx.sink`` is then a wrapper with only the sink protocol's members (``write_file``
    #: too when the sink has it).
    verified_by_write: ClassVar[bool] = False
    #: The pydantic model of this processor's ``[pipelines.options]`` (documented in
    #: docs/configuration.md by ``s3flow config-reference``); None = no options.
    #: :class:`OptionsProcessor` sets it from its type argument and validates it.
    options_model: ClassVar[type[BaseModel] | None] = None

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    async def start(self, pipeline: PipelineContext) -> None:
        """Called once before the first object (open connections, start tasks here)."""

    async def stop(self) -> None:
        """Called once at shutdown."""

    @classmethod
    async def describe_file(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> list[str]:
        """Lines ``s3flow files show`` prints under one of this pipeline's files.

        For state a pipeline keeps beyond the engine's lifecycle (a checkpoint, the
        manifest a file is in). Plain text, one item a line; none by default.
        """
        return []

    @classmethod
    async def refuse_release(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> str | None:
        """Why ``s3flow files release`` of this record would change nothing (the
        release is refused with this text, saying what to do instead); None (the
        default) lets it go ahead."""
        return None


class OptionsProcessor(BaseProcessor, Generic[OptionsT]):
    """Base of a processor with an options model: ``class P(OptionsProcessor[MyOptions])``.

    The type argument becomes the class's ``options_model``, and ``__init__``
    validates the ``options`` table against it into ``self.opts`` (typed as that
    model; ConfigError naming every bad key), so a subclass declares only what
    differs: its ``name``, ``cpu_bound`` when it is, and more set-up in its own
    ``__init__`` when it needs any.
    """

    opts: OptionsT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is OptionsProcessor:
                (cls.options_model,) = get_args(base)

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        model = self.options_model
        if model is None:
            raise TypeError(f"{type(self).__name__}: give OptionsProcessor its options model")
        self.opts = cast(OptionsT, parse_options(self.name, model, self.options))
