"""events.parse_body: every envelope shape, key decoding, and poison inputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.errors import Disposition, EnvelopeError
from s3flow.events import Envelope, ObjectEvent, content_version, parse_body, parse_document


def s3_record(
    key: str = "logs/a.txt",
    bucket: str = "incoming",
    event_name: str = "ObjectCreated:Put",
    **obj: Any,
) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T12:00:00.000Z",
        "eventName": event_name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, **obj},
        },
    }


def notification(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def sns_wrap(inner: str | dict[str, Any]) -> str:
    message = inner if isinstance(inner, str) else json.dumps(inner)
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "1b2c",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
            "Message": message,
        }
    )


def eventbridge(key: str = "logs/a.txt", detail_type: str = "Object Created") -> dict[str, Any]:
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2024-05-01T12:00:00Z",
        "region": "eu-west-1",
        "detail": {
            "version": "0",
            "bucket": {"name": "incoming"},
            "object": {
                "key": key,
                "size": 5,
                "etag": "b1946ac92492d2347c6235b4d2611184",
                "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                "sequencer": "00617F08299329D189",
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "reason": "PutObject",
        },
    }


TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2024-05-01T12:00:00.000Z",
    "Bucket": "incoming",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


# --- valid envelopes ---------------------------------------------------------


def test_direct_notification_one_record() -> None:
    body = notification(
        s3_record(size=1024, eTag='"0123abcd"', versionId="v1", sequencer="0055AED6DCD90281E5")
    )
    env = parse_body(body)
    assert env.kind == "s3"
    assert env.test_event is False
    assert env.events == [
        ObjectEvent(
            bucket="incoming",
            key="logs/a.txt",
            event_name="ObjectCreated:Put",
            size=1024,
            etag="0123abcd",
            version_id="v1",
            sequencer="0055AED6DCD90281E5",
            event_time="2024-05-01T12:00:00.000Z",
            region="us-east-1",
            source="s3",
        )
    ]
    ev = env.events[0]
    assert ev.is_created and not ev.is_removed
    assert ev.event_version == "v1"
    assert ev.uri() == "s3://incoming/logs/a.txt"


def test_direct_notification_bytes_body() -> None:
    env = parse_body(notification(s3_record(key="x.txt")).encode("utf-8"))
    assert [e.key for e in env.events] == ["x.txt"]


def test_direct_notification_several_records_keep_order() -> None:
    body = notification(
        s3_record(key="a.txt", size=1),
        s3_record(key="b.txt", size=2, bucket="other"),
        s3_record(key="c.txt", size=3, event_name="ObjectCreated:CompleteMultipartUpload"),
    )
    env = parse_body(body)
    assert [(e.bucket, e.key, e.size) for e in env.events] == [
        ("incoming", "a.txt", 1),
        ("other", "b.txt", 2),
        ("incoming", "c.txt", 3),
    ]
    assert env.events[2].event_name == "ObjectCreated:CompleteMultipartUpload"


def test_event_version_is_version_id_then_etag_at_sequencer_then_unknown() -> None:
    seq = parse_body(notification(s3_record(eTag="e1", sequencer="00A1"))).events[0]
    assert seq.event_version == "e1@00A1"
    null_version = parse_body(
        notification(s3_record(eTag="e1", versionId="null", sequencer="00A2"))
    ).events[0]
    assert null_version.event_version == "e1@00A2"  # unversioned buckets may say "null"
    # Neither: the worker reads (eTag, LastModified) with the object instead.
    bare = parse_body(notification(s3_record(eTag="e1"))).events[0]
    assert bare.event_version is None
    assert bare.size is None and bare.version_id is None


def test_an_event_naming_its_upload_by_etag_reads_only_that_upload() -> None:
    """``<eTag>@<sequencer>`` events read their object conditionally on the eTag (an
    overwrite since is found by the read itself); versionId or no sequencer: no condition."""

    def first(**obj: str) -> ObjectEvent:
        return parse_body(notification(s3_record(**obj))).events[0]

    assert first(eTag='"e1"', sequencer="00A1").if_match == "e1"
    assert first(eTag="e1", versionId="null", sequencer="00A2").if_match == "e1"
    assert first(eTag="e1", versionId="v1", sequencer="00A3").if_match is None
    assert first(eTag="e1").if_match is None  # identified by a HEAD of the object now
    assert first(eTag="", sequencer="00A4").if_match is None


def test_content_version_is_etag_at_whole_seconds() -> None:
    t = datetime(2026, 11, 30, 6, 0, 1, 900_000, tzinfo=UTC)
    assert content_version('"abc"', t) == f"abc@t{int(t.timestamp())}"
    assert content_version("abc", t) == content_version("abc", int(t.timestamp()))
    assert content_version("abc", t) != content_version("abc", int(t.timestamp()) + 1)


def test_record_body_resends_one_record_alone() -> None:
    body = notification(s3_record(key="a.txt", size=1), s3_record(key="b%2Fc+d.txt", size=2))
    second = parse_body(body).events[1]
    again = parse_body(second.record_body()).events
    assert [(e.key, e.size) for e in again] == [("b/c d.txt", 2)]


def test_missing_key_names_the_record() -> None:
    rec = s3_record(key="a.txt")
    del rec["s3"]["object"]["key"]
    env = parse_body(notification(s3_record(key="ok.txt"), rec))
    # Dead-lettered alone, it is Records[0] of its body; the reason also says where it was.
    assert str(env.bad_records[0].error).startswith("Records[0].s3.object.key is missing")
    assert "(Records[1] of the message it came in)" in str(env.bad_records[0].error)


def test_size_as_digit_string_is_accepted() -> None:
    env = parse_body(notification(s3_record(size="42")))
    assert env.events[0].size == 42


def test_sns_wrapped_notification() -> None:
    inner = notification(s3_record(key="in/red+flower.json", size=7))
    env = parse_body(sns_wrap(inner))
    assert env.kind == "sns"
    assert env.test_event is False
    assert [(e.bucket, e.key, e.size) for e in env.events] == [
        ("incoming", "in/red flower.json", 7)
    ]


def test_eventbridge_object_created() -> None:
    env = parse_body(json.dumps(eventbridge()))
    assert env.kind == "eventbridge"
    assert env.events == [
        ObjectEvent(
            bucket="incoming",
            key="logs/a.txt",
            event_name="Object Created",
            size=5,
            etag="b1946ac92492d2347c6235b4d2611184",
            version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            sequencer="00617F08299329D189",
            event_time="2024-05-01T12:00:00Z",
            region="eu-west-1",
            source="eventbridge",
        )
    ]
    assert env.events[0].is_created


def test_eventbridge_object_deleted_is_removed() -> None:
    env = parse_body(json.dumps(eventbridge(detail_type="Object Deleted")))
    ev = env.events[0]
    assert ev.is_removed and not ev.is_created


def test_s3_test_event_direct() -> None:
    env = parse_body(json.dumps(TEST_EVENT))
    assert env.test_event is True
    assert env.events == []
    assert env.kind == "test"


def test_s3_test_event_sns_wrapped() -> None:
    env = parse_body(sns_wrap(TEST_EVENT))
    assert env.test_event is True
    assert env.events == []


@pytest.mark.parametrize(
    "event_name", ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"]
)
def test_object_removed_events(event_name: str) -> None:
    env = parse_body(notification(s3_record(event_name=event_name)))
    ev = env.events[0]
    assert ev.event_name == event_name
    assert ev.is_removed is True
    assert ev.is_created is False


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("red+flower%2Bx%3D%C3%BC.json", "red flower+x=ü.json"),
        ("in%2Fred+flower.json", "in/red flower.json"),
        ("100%25.txt", "100%.txt"),
        ("%25", "%"),
        ("plain/key.txt", "plain/key.txt"),
    ],
)
def test_keys_are_url_decoded_with_unquote_plus(raw: str, decoded: str) -> None:
    assert parse_body(notification(s3_record(key=raw))).events[0].key == decoded
    assert parse_body(sns_wrap(notification(s3_record(key=raw)))).events[0].key == decoded


@pytest.mark.parametrize(
    "key",
    [
        "raw/c++/10:47 a+b.csv",  # '+' is a plus, ':' unencoded as in a real EventBridge event
        "100%25.txt",  # a key that happens to look encoded is still the key
        "in/red flower.json",
        "ünïcødé/日本語.txt",
    ],
)
def test_eventbridge_keys_are_taken_as_they_are(key: str) -> None:
    """EventBridge does not URL-encode keys (unlike notification records): decoding
    them would turn a '+' into a space and name an object that does not exist."""
    assert parse_body(json.dumps(eventbridge(key=key))).events[0].key == key


@pytest.mark.parametrize(
    ("name", "created", "removed"),
    [
        ("s3:ObjectCreated:Put", True, False),
        ("s3:ObjectCreated:CompleteMultipartUpload", True, False),
        ("s3:ObjectRemoved:Delete", False, True),
    ],
)
def test_event_names_with_the_s3_prefix_minio_writes(
    name: str, created: bool, removed: bool
) -> None:
    """MinIO (and Ceph) write ``s3:ObjectCreated:Put``: read as ``ObjectCreated:Put``,
    not as an event with nothing to do."""
    rec = s3_record(key="users%2Fa+b.csv", event_name=name)
    rec["eventSource"] = "minio:s3"
    ev = parse_body(notification(rec)).events[0]
    assert ev.event_name == name.removeprefix("s3:")
    assert (ev.is_created, ev.is_removed) == (created, removed)
    assert ev.key == "users/a b.csv"


def test_parse_document_accepts_decoded_dict() -> None:
    env = parse_document(json.loads(notification(s3_record(key="k"))))
    assert isinstance(env, Envelope)
    assert env.events[0].key == "k"


# --- poison envelopes ----------------------------------------------------------


def _error(body: str | bytes) -> str:
    with pytest.raises(EnvelopeError) as info:
        parse_body(body)
    assert info.value.disposition is Disposition.POISON
    return str(info.value)


def test_not_json() -> None:
    assert "not JSON" in _error("this is not json {")


def test_json_list() -> None:
    assert "list" in _error(json.dumps([s3_record()]))


@pytest.mark.parametrize("body", ["42", '"text"', "null", "true"])
def test_json_scalars(body: str) -> None:
    assert "not an object" in _error(body)


def test_empty_records() -> None:
    assert "Records" in _error(json.dumps({"Records": []}))


def test_records_not_a_list() -> None:
    assert "Records" in _error(json.dumps({"Records": {"s3": {}}}))


def test_record_without_s3() -> None:
    rec = s3_record()
    del rec["s3"]
    msg = _error(notification(rec))
    assert "Records[0]" in msg and "s3" in msg


def test_a_bad_record_beside_good_ones_is_kept_apart_with_its_index() -> None:
    rec = s3_record()
    del rec["s3"]
    env = parse_body(notification(s3_record(key="a.txt"), rec, s3_record(key="b.txt")))
    assert [e.key for e in env.events] == ["a.txt", "b.txt"]
    (bad,) = env.bad_records
    assert bad.index == 1 and "Records[1]" in str(bad.error)
    assert json.loads(bad.record_body()) == {"Records": [rec]}


def test_a_bad_records_reason_names_it_as_the_body_it_is_dead_lettered_in_has_it() -> None:
    # The DLQ body holds the bad record alone: the reason said Records[1], the body had
    # no Records[1].
    body = notification(s3_record(key="a.txt"), {"garbage": 1})
    (bad,) = parse_body(body).bad_records
    alone = json.loads(bad.record_body())
    assert alone == {"Records": [{"garbage": 1}]}
    assert str(bad.error) == (
        "Records[0] has no 's3' section (Records[1] of the message it came in)"
    )
    assert str(bad.error).split(" ", 1)[0] in _error(bad.record_body())


def test_a_bad_first_record_keeps_its_reason() -> None:
    env = parse_body(notification({"garbage": 1}, s3_record(key="a.txt")))
    (bad,) = env.bad_records
    assert str(bad.error) == "Records[0] has no 's3' section"


def test_only_bad_records_make_the_message_bad() -> None:
    rec = s3_record()
    del rec["s3"]
    assert "Records[0]" in _error(notification(rec, {"eventSource": "aws:sqs"}))


def test_bucket_name_missing() -> None:
    rec = s3_record()
    del rec["s3"]["bucket"]["name"]
    assert "bucket.name" in _error(notification(rec))


def test_bucket_name_empty() -> None:
    assert "bucket.name" in _error(notification(s3_record(bucket="")))


def test_key_not_a_string() -> None:
    assert "key" in _error(notification(s3_record(key=123)))  # type: ignore[arg-type]


def test_key_missing() -> None:
    rec = s3_record()
    del rec["s3"]["object"]["key"]
    assert "key" in _error(notification(rec))


def test_size_negative() -> None:
    assert "negative" in _error(notification(s3_record(size=-1)))


@pytest.mark.parametrize("size", [True, 1.5, "12a", [1]])
def test_size_not_an_integer(size: Any) -> None:
    assert "size" in _error(notification(s3_record(size=size)))


def test_event_source_not_s3() -> None:
    rec = s3_record()
    rec["eventSource"] = "aws:sqs"
    assert "eventSource" in _error(notification(rec))


def test_body_not_utf8() -> None:
    assert "UTF-8" in _error(b'{"Records": "\xff\xfe"}')


def test_nested_sns_in_sns() -> None:
    body = sns_wrap(sns_wrap(notification(s3_record())))
    assert "nested" in _error(body)


def test_sns_message_not_json() -> None:
    assert "not JSON" in _error(sns_wrap("{{nope"))


def test_sns_message_not_a_string() -> None:
    body = json.dumps({"Type": "Notification", "Message": {"Records": []}})
    assert "Message" in _error(body)


def test_unknown_document_lists_top_level_keys() -> None:
    msg = _error(json.dumps({"hello": 1, "world": 2}))
    assert "hello" in msg and "world" in msg


def test_eventbridge_without_detail() -> None:
    doc = eventbridge()
    del doc["detail"]
    assert "detail" in _error(json.dumps(doc))


def test_too_large_body() -> None:
    assert "larger" in _error(" " * (2 * 1024 * 1024))


def test_deeply_nested_json() -> None:
    _error("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("size", ["²", "①", "1²"])
def test_size_non_decimal_digit_string_is_envelope_error(size: str) -> None:
    assert "size" in _error(notification(s3_record(size=size)))


# --- property tests ------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "0", "17", "-3", "²", "١٢", "%", "%2", "a+b%2Fc", "\ud800"])
)
maybe = scalars | json_values


sizes = st.one_of(maybe, st.sampled_from(["²", "①", "1²", "٣", "12"]))


def _maybe_dict(entries: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=entries)


s3_objects = _maybe_dict(
    {
        "key": maybe,
        "size": sizes,
        "eTag": maybe,
        "versionId": maybe,
        "sequencer": maybe,
    }
)
s3_sections = _maybe_dict(
    {"bucket": _maybe_dict({"name": maybe}) | maybe, "object": s3_objects | maybe}
)
records = _maybe_dict(
    {
        "eventSource": st.sampled_from(["aws:s3", "minio:s3", "aws:sqs"]) | maybe,
        "eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]) | maybe,
        "eventTime": maybe,
        "awsRegion": maybe,
        "s3": s3_sections | maybe,
    }
)
s3_like = _maybe_dict(
    {
        "Records": st.lists(records | maybe, max_size=3) | maybe,
        "Event": st.just("s3:TestEvent") | maybe,
    }
)
eventbridge_like = st.fixed_dictionaries(
    {"source": st.just("aws.s3") | maybe, "detail-type": st.just("Object Created") | maybe},
    optional={
        "detail": _maybe_dict(
            {
                "bucket": _maybe_dict({"name": maybe}) | maybe,
                "object": _maybe_dict(
                    {"key": maybe, "size": sizes, "etag": maybe, "version-id": maybe}
                )
                | maybe,
            }
        )
        | maybe,
        "time": maybe,
        "region": maybe,
    },
)
close_documents = s3_like | eventbridge_like
sns_like = close_documents.map(
    lambda d: {"Type": "Notification", "Message": json.dumps(d)}
) | st.fixed_dictionaries({"Type": st.just("Notification"), "Message": maybe})

valid_keys = st.text(min_size=1, max_size=20)
valid_records = st.builds(
    s3_record,
    key=valid_keys,
    bucket=st.text(min_size=1, max_size=10),
    event_name=st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]),
    size=st.integers(min_value=0, max_value=2**40),
    eTag=st.text(max_size=10),
)
valid_documents = (
    st.lists(valid_records, min_size=1, max_size=3).map(lambda rs: {"Records": rs})
    | valid_keys.map(eventbridge)
    | st.just(TEST_EVENT)
)


def _container_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _container_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _container_paths(v, (*path, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """A valid notification with a few values deleted or replaced by arbitrary JSON."""
    doc = json.loads(json.dumps(draw(valid_documents)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path = draw(st.sampled_from(_container_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(sizes if path[-1] == "size" else maybe)
    if draw(st.booleans()):
        doc = {"Type": "Notification", "Message": json.dumps(doc)}
    return doc


def _check(body: str | bytes) -> None:
    try:
        env = parse_body(body)
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)
    for ev in env.events:
        assert isinstance(ev, ObjectEvent)
        assert isinstance(ev.bucket, str) and ev.bucket
        assert isinstance(ev.key, str) and ev.key
        assert ev.size is None or (isinstance(ev.size, int) and ev.size >= 0)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_property_arbitrary_json(doc: Any) -> None:
    _check(json.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(close_documents | sns_like)
def test_property_close_to_s3_notifications(doc: dict[str, Any]) -> None:
    _check(json.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(mutated_documents())
def test_property_mutated_valid_notifications(doc: Any) -> None:
    _check(json.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(st.binary() | st.text())
def test_property_arbitrary_bytes_and_text(body: bytes | str) -> None:
    _check(body)
