"""`s3flow web` warns at start when the uploads bucket's CORS rules allow none of the page's
origins (served on another port than the one provisioned): every upload from the page
failed with a vague network error while its job waited for files."""

from __future__ import annotations

from typing import Any

import pytest
from web_support import JobsEnv

from s3flow.aws import open_clients
from s3flow.settings import load_settings
from s3flow.web.runtime import warn_if_page_cannot_upload

pytestmark = pytest.mark.integration


async def test_a_page_origin_the_bucket_does_not_allow_is_warned_about(
    jobs_env: JobsEnv, s3: Any
) -> None:
    settings = jobs_env.settings(port=48580)
    async with open_clients(settings.aws) as clients:
        unset = await warn_if_page_cannot_upload(clients.s3, settings)
        assert len(unset) == 1 and "lets browsers POST from no origin" in unset[0], unset
        s3.put_bucket_cors(
            Bucket=jobs_env.bucket,
            CORSConfiguration={
                "CORSRules": [
                    {
                        "AllowedOrigins": ["http://127.0.0.1:48580", "http://localhost:48580"],
                        "AllowedMethods": ["POST"],
                        "AllowedHeaders": ["*"],
                    }
                ]
            },
        )
        assert await warn_if_page_cannot_upload(clients.s3, settings) == []
        other = jobs_env.settings(port=48581)
        (said,) = await warn_if_page_cannot_upload(clients.s3, other)
    assert said.startswith(
        f"the uploads bucket {jobs_env.bucket!r} lets browsers POST from "
        "http://127.0.0.1:48580, http://localhost:48580, not from this page "
        "(http://127.0.0.1:48581, http://localhost:48581)"
    ), said
    assert "Run `s3flow provision`" in said
    # Behind a proxy the page is opened at [jobs] cors_origins: that is what must be allowed.
    proxied = jobs_env.data(port=48581)
    proxied["jobs"]["cors_origins"] = ["http://localhost:48580"]
    async with open_clients(settings.aws) as clients:
        assert await warn_if_page_cannot_upload(clients.s3, load_settings(None, proxied)) == []
        s3.put_bucket_cors(  # an origin wildcard, as S3 allows
            Bucket=jobs_env.bucket,
            CORSConfiguration={
                "CORSRules": [{"AllowedOrigins": ["http://*:48581"], "AllowedMethods": ["POST"]}]
            },
        )
        assert await warn_if_page_cannot_upload(clients.s3, other) == []
