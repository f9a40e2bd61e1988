"""
A real Apache Kafka broker (KRaft, one node on 127.0.0.1) for these tests: the jars come from
Maven Central through ``deploy/kafka/install.sh`` (``deploy/setup.sh`` runs it), the broker
is ``deploy/kafka/broker.sh``, started once per test session and stopped at the end.

Without java or the jars the broker tests are skipped with the reason, unless
``JUMPING_REQUIRE_KAFKA=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
KAFKA = REPO / "deploy" / "kafka"
HOME = Path(os.environ.get("JUMPING_KAFKA_HOME", Path.home() / ".cache" / "jumping" / "kafka"))

# the core's tunnel helpers (tests/integration/nodes.py) are reused as plain modules
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(HERE))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root, network namespaces and /dev/net/tun")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from jumping.testing.netns import available

    why = available()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"network namespace test: {why}")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int = 19092) -> int:
    """``preferred`` (broker) and ``preferred + 1`` (controller) if free, else another pair."""
    if _free(preferred) and _free(preferred + 1):
        return preferred
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _free(port) and _free(port + 1):
            return port
    raise RuntimeError("no two free consecutive TCP ports on 127.0.0.1")


def missing() -> str | None:
    if shutil.which("java") is None:
        return "java is not installed (apt-get install default-jre-headless, or deploy/setup.sh)"
    if not list((HOME / "libs").glob(".complete-*")):
        return f"no Kafka jars in {HOME} (run deploy/kafka/install.sh, or deploy/setup.sh)"
    try:
        import kafka  # noqa: F401
    except ImportError:
        return "kafka-python is not installed (pip install kafka-python)"
    return None


class Broker:
    """One broker process, driven through deploy/kafka/broker.sh."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = pick_port(int(os.environ.get("KAFKA_PORT", "19092")))
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "JUMPING_KAFKA_HOME": str(HOME)}
        self.running = False

    def _sh(self, cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA / "broker.sh"), cmd, str(self.dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        r = self._sh("start", 120)
        if r.returncode != 0:
            log = self.dir / "kafka.log"
            tail = "\n".join(log.read_text().splitlines()[-30:]) if log.exists() else ""
            raise RuntimeError(f"broker did not start:\n{r.stdout}{r.stderr}\n{tail}")
        self.running = True

    def stop(self) -> None:
        self._sh("stop", 60)
        self.running = False

    def topic(self, hint: str = "t") -> str:
        """A fresh topic name (one per test: nothing leaks from one test into another)."""
        safe = "".join(c if c.isalnum() else "-" for c in hint)[:40]
        return f"{safe}-{uuid.uuid4().hex[:8]}"

    def create_topic(self, topic: str, partitions: int = 3) -> None:
        """Create ``topic`` with deploy/kafka/topic.properties, as an operator would."""
        r = subprocess.run(
            ["bash", str(KAFKA / "create-topic.sh"), self.bootstrap, topic],
            env={**self.env, "PARTITIONS": str(partitions), "REPLICATION": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    why = missing()
    if why is not None:
        if os.environ.get("JUMPING_REQUIRE_KAFKA"):
            pytest.fail(f"JUMPING_REQUIRE_KAFKA is set but {why}")
        pytest.skip(f"real Kafka broker unavailable: {why}")
    b = Broker(tmp_path_factory.mktemp("kafka"))
    atexit.register(b.stop)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(autouse=True)
def _broker_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stopped the broker and failed before starting it again must not fail
    every test after it: the broker is started again after such a test."""
    yield
    if "broker" in request.fixturenames:
        b = request.getfixturevalue("broker")
        if not b.running:
            b.start()


def wait_for(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    assert cond(), f"timed out after {timeout}s waiting for {what}"
