"""Jars fetched with Maven are checked against their checksums (a real mvn, a file repo)."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from s3flow.local.kafka.host import ServiceError
from s3flow.local.kafka.install import copy_jars

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
{rest}</project>
"""


def test_a_jar_whose_checksum_does_not_match_is_refused_and_not_kept(tmp_path: Path) -> None:
    """Without --strict-checksums Maven only warned (hidden by -q) and the corrupt jar was
    installed for good."""
    if shutil.which("mvn") is None:
        pytest.fail("mvn is needed (scripts/install installs Maven)")
    version = f"1-{uuid.uuid4().hex[:8]}"  # never in the local repository already
    remote = tmp_path / "remote"
    where = remote / "dev" / "s3flow" / "test" / "bad" / version
    where.mkdir(parents=True)
    artifact_pom = _POM.format(group="dev.s3flow.test", artifact="bad", version=version, rest="")
    (where / f"bad-{version}.pom").write_text(artifact_pom)
    (where / f"bad-{version}.pom.sha1").write_text(hashlib.sha1(artifact_pom.encode()).hexdigest())
    (where / f"bad-{version}.jar").write_bytes(b"not a jar: corrupted on the way")
    (where / f"bad-{version}.jar.sha1").write_text("0" * 40)
    pom = tmp_path / "pom.xml"
    pom.write_text(
        _POM.format(
            group="dev.s3flow",
            artifact="checksum-test",
            version="1",
            rest=(
                f"<repositories><repository><id>files</id><url>{remote.as_uri()}</url>"
                "</repository></repositories><dependencies><dependency>"
                f"<groupId>dev.s3flow.test</groupId><artifactId>bad</artifactId>"
                f"<version>{version}</version></dependency></dependencies>"
            ),
        )
    )
    libs = tmp_path / "libs"
    local = Path(os.environ.get("S3FLOW_MAVEN_REPO") or Path.home() / ".m2" / "repository")
    try:
        with pytest.raises(ServiceError, match="mvn could not fetch the test jar"):
            copy_jars(
                libs,
                label="the test jar",
                pom=pom,
                pom_text="",
                wanted=["bad"],
                progress=lambda _: None,
                quiet=True,
            )
        assert not libs.exists()
    finally:  # what Maven kept of this made-up artifact in its local repository
        shutil.rmtree(local / "dev" / "s3flow" / "test" / "bad" / version, ignore_errors=True)
