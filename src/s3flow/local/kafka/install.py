"""Java, Maven and the broker jars: what the broker needs on this machine, installed once.

The jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies) come from Maven
Central through Maven (``scripts/kafka/pom.xml``, or a generated pom outside a checkout)
and are copied into ``<cache>/kafka-<version>/libs`` (``.complete`` marks a full copy).
The cache is ``S3FLOW_SERVICES_CACHE``, default ``<repo>/.cache/services``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path

from s3flow.local.kafka.host import ServiceError, flock, log, mkdir

#: The Kafka release the broker runs; keep equal to ``kafka.version`` in scripts/kafka/pom.xml.
KAFKA_VERSION = "4.4.0"
#: Logging backend shipped next to the broker (the Kafka distribution ships log4j2 too).
LOG4J_VERSION = "2.25.2"
MIN_JAVA = 17

_COMPLETE = ".complete"


# --- environment ----------------------------------------------------------------------


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@cache
def java_version() -> int | None:
    """Major version of the ``java`` on PATH (or in JAVA_HOME), ``None`` when there is none."""
    java = _java_binary()
    if java is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # "1.8.0_x" style for Java 8 and older.
    return int(match.group(2) or 0) if major == 1 else major


def java_available() -> bool:
    """True when a Java >= 17 runtime is there to run the broker."""
    version = java_version()
    return version is not None and version >= MIN_JAVA


def maven_available() -> bool:
    """True when ``mvn`` is on PATH (only needed to install the jars once)."""
    return shutil.which("mvn") is not None


def require_java() -> str:
    """The ``java`` binary to run the broker with; :class:`ServiceError` when none is 17+."""
    java = _java_binary()
    version = java_version()
    if java is None or version is None:
        raise ServiceError(
            f"the Kafka broker needs Java {MIN_JAVA}+ and none was found on PATH or in JAVA_HOME: "
            "install a JDK/JRE 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    if version < MIN_JAVA:
        raise ServiceError(
            f"the Kafka broker needs Java {MIN_JAVA}+, found Java {version} ({java}): "
            "install a JDK/JRE 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
            "or point JAVA_HOME at one"
        )
    return java


def repo_root() -> Path | None:
    """The source checkout this module lives in (``None`` when installed from a wheel)."""
    root = Path(__file__).resolve().parents[4]
    return root if (root / "scripts" / "kafka" / "pom.xml").is_file() else None


def repo_pom() -> Path | None:
    """``scripts/kafka/pom.xml`` of the checkout, when there is one."""
    root = repo_root()
    return root / "scripts" / "kafka" / "pom.xml" if root else None


def default_cache_dir() -> Path:
    """``$S3FLOW_SERVICES_CACHE``, else ``<repo>/.cache/services``, else ``~/.cache/s3flow``."""
    env = os.environ.get("S3FLOW_SERVICES_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / ".cache" / "services"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "s3flow" / "services"


def pom_kafka_version(pom: Path) -> str:
    """The ``kafka.version`` property of a pom file."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise ServiceError(f"{pom}: no <kafka.version> property")
    return (node.text or "").strip()


# --- install --------------------------------------------------------------------------


def install(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Copy the broker jars into ``<cache>/kafka-<version>/libs`` (once) and return that dir.

    Runs ``mvn dependency:copy-dependencies`` on ``scripts/kafka/pom.xml``; Maven keeps its
    own download cache in ``~/.m2`` (or ``S3FLOW_MAVEN_REPO``). Safe to call concurrently.
    """
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    pom = repo_pom()
    version = pom_kafka_version(pom) if pom else KAFKA_VERSION
    return copy_jars(
        cache_dir / f"kafka-{version}" / "libs",
        label=f"Apache Kafka {version}",
        pom=pom,
        pom_text=maven_pom(
            "s3flow-kafka-broker",
            [
                ("org.apache.kafka", "kafka_2.13", version),
                ("org.apache.logging.log4j", "log4j-api", LOG4J_VERSION),
                ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
                ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
            ],
            properties={"kafka.version": version},
            replaces="scripts/kafka/pom.xml",
        ),
        wanted=[f"kafka_2.13-{version}"],
        stamp=[version],
        progress=log,
        quiet=quiet,
    )


def copy_jars(
    libs: Path,
    *,
    label: str,
    pom: Path | None,
    pom_text: str,
    wanted: Sequence[str],
    stamp: Sequence[str] = (),
    progress: Callable[[str], None],
    quiet: bool = False,
) -> Path:
    """Copy a pom's runtime jars from Maven Central into ``libs`` once; return ``libs``.

    ``pom``: the checkout's pom, else ``pom_text`` is written to ``pom.xml`` beside
    ``libs``. The jars are copied into a staging dir that becomes ``libs`` only when
    every prefix in ``wanted`` names one of them; ``libs/.complete`` (``stamp``, then the
    jar names) marks a full copy. Safe to call concurrently (a file lock beside the dir).
    ``label`` names what is installed in messages; ``progress`` prints progress
    lines (unless ``quiet``).
    """
    if (libs / _COMPLETE).is_file():
        return libs
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"installing {label} needs Maven (mvn) to fetch its jars from Maven Central: "
            "install Maven 3.6+ (Debian/Ubuntu: apt-get install maven)"
        )
    home = mkdir(libs.parent)
    with flock(home.parent / f"{home.name}.lock"):
        if (libs / _COMPLETE).is_file():  # another process finished meanwhile
            return libs
        if pom is None:
            pom = home / "pom.xml"
            pom.write_text(pom_text)
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=home))
        # -C: a download whose checksum does not match fails (by default Maven only
        # warns, -q hides the warning, and the bad jar would be kept for good).
        cmd = [mvn, "-q", "-B", "-C", "-f", str(pom)]
        if os.environ.get("S3FLOW_MAVEN_REPO"):
            cmd.append(f"-Dmaven.repo.local={os.environ['S3FLOW_MAVEN_REPO']}")
        cmd += [
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        if not quiet:
            progress(f"installing {label} (Maven Central) into {libs}")
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if proc.returncode != 0 or not all(any(j.startswith(w) for j in jars) for w in wanted):
            shutil.rmtree(staging, ignore_errors=True)
            out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise ServiceError(
                f"mvn could not fetch {label} (exit {proc.returncode}); "
                f"is Maven Central reachable?\n$ {' '.join(cmd)}\n{out}"
            )
        (staging / _COMPLETE).write_text("\n".join([*stamp, *jars]) + "\n")
        if libs.exists():  # a partial copy from an older, interrupted layout
            shutil.rmtree(libs)
        staging.rename(libs)
        if not quiet:
            progress(f"installed {len(jars)} jars in {time.monotonic() - started:.1f}s")
    return libs


def maven_pom(
    artifact_id: str,
    dependencies: Sequence[tuple[str, str, str]],
    *,
    replaces: str,
    properties: Mapping[str, str] | None = None,
) -> str:
    """The pom :func:`copy_jars` writes outside a checkout (where ``replaces`` is missing).

    ``dependencies``: (groupId, artifactId, version) of each artifact whose runtime jars
    are copied.
    """
    props = "".join(f"<{k}>{v}</{k}>" for k, v in (properties or {}).items())
    return _POM.format(
        replaces=replaces,
        artifact_id=artifact_id,
        properties=f"  <properties>{props}</properties>\n" if props else "",
        dependencies="".join(
            f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>\n"
            for group, artifact, version in dependencies
        ),
    )


_POM = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by s3flow (no {replaces} next to this install) -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.s3flow</groupId>
  <artifactId>{artifact_id}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
{properties}  <dependencies>
{dependencies}  </dependencies>
  <build><pluginManagement><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>3.8.1</version>
  </plugin></plugins></pluginManagement></build>
</project>
"""
