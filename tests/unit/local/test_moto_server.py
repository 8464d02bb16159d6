"""s3flow's patch of moto's DynamoDB backend (``s3flow.local.moto_server``).

Each check runs in a child process: the patch changes moto's backend class for the
whole process, and the test process should keep moto as shipped.
"""

from __future__ import annotations

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
