"""s3flow's patch of moto's DynamoDB backend (``s3flow.local.moto_server``).

Each check runs in a child process: the patch changes moto's backend class for the
whole process, and the test process should keep moto as shipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Two UpdateItem ADDs on one counter; prints what the first call returned, read after
# the second (as moto's response layer reads it after the backend's lock is released).
TWO_ADDS = r"""
import sys
import boto3
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from s3flow.local.moto_server import patch_moto_dynamodb

if sys.argv[1] == "patched":
    patch_moto_dynamodb()
with mock_aws():
    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]

    def add():
        return backend.update_item(
            "t",
            {"pk": {"S": "c"}},
            update_expression="ADD #n :by",
            attribute_updates=None,
            expression_attribute_names={"#n": "n"},
            expression_attribute_values={":by": {"N": "1"}},
            expected=None,
            condition_expression=None,
        )

    first = add()
    add()
    print(first.to_json()["Attributes"]["n"]["N"])
"""


def _first_add_reads(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", TWO_ADDS, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_update_item_answers_with_its_own_write() -> None:
    """Patched, an UpdateItem's returned item is a copy taken under the lock: a later
    write does not show through (two racing ADDs were both answered 5, never 4)."""
    assert _first_add_reads("patched") == "1"


def test_moto_as_shipped_returns_the_live_item() -> None:
    """Why the patch copies: unpatched, the first ADD's answer changes with the second
    write. If moto ever copies by itself, this fails and the copy can go."""
    assert _first_add_reads("plain") == "2"


# The backend moto picks for a few hosts, and how often it listed its package to
# find them, before and after the dispatch patch; prints both as JSON.
DISPATCH = r"""
import json
import os
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from s3flow.local.moto_server import patch_moto_dispatch

hosts = [None, "moto_api", "s3", "s3.us-east-1.amazonaws.com", "sqs.us-east-1.amazonaws.com",
         "dynamodb", "sts.amazonaws.com", "nothing.example"]
listed = [0]
real_listdir = os.listdir

def listdir(path):
    listed[0] += 1
    return real_listdir(path)

os.listdir = listdir
app = DomainDispatcherApplication(create_app=lambda backend: None)
before = [app.get_backend_for_host(h) for h in hosts]
listed_before, listed[0] = listed[0], 0
assert patch_moto_dispatch() and patch_moto_dispatch()  # a second call changes nothing
after = [[app.get_backend_for_host(h) for h in hosts] for _ in range(50)]
print(json.dumps({"before": before, "after": after, "listed_before": listed_before,
                  "listed_after": listed[0]}))
"""


def test_dispatch_patch_finds_the_same_backends_without_listing_moto_each_time() -> None:
    """moto lists its package directory for every request to find the backend; patched,
    it lists it once (when patched) and answers every host as before."""
    out = subprocess.run(
        [sys.executable, "-c", DISPATCH], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["before"][2:5] == ["s3", "s3", "sqs"]
    assert got["listed_before"] >= 6  # once per host that is not None or moto_api
    assert all(row == got["before"] for row in got["after"])
    assert got["listed_after"] == 1
