"""The plugin seam is what ``jumping/interfaces.py`` declares, nothing hidden: a rate-limit
policy written from the interface alone passes the mixin and runs in a node (told about
the policy through ``reconfigure``, at build and on every reload), ownership failures are
told apart by exception type, and ``shared``/``healthy`` are declared attributes."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

import twisted.plugins
from jumping import keys, plugin
from jumping.config import load_config
from jumping.core.policy import Policy
from jumping.core.ratelimit import SwitchLimiter
from jumping.errors import OwnershipConflict, OwnershipUnavailable, PluginError
from jumping.interfaces import IOwnershipBackend, IRateLimitPolicy
from jumping.service import node as node_module
from jumping.service.node import NodeService
from jumping.service.ownership import ownership_error
from jumping.testing.conformance import RateLimitPolicyTests

#: a third-party rate-limit policy, written from jumping/interfaces.py alone: its limits
#: are named differently from the built-in's, and it keeps a log of what it was told
THIRD_PARTY = '''
from collections import OrderedDict

from zope.interface import implementer

from jumping.interfaces import IOwnershipBackend, IRateLimitPolicy
from jumping.plugin import PluginSpec


@implementer(IRateLimitPolicy)
class SlidingLog:
    def __init__(self, per_minute=None, gap_ms=None, keys=1000):
        self.per_minute, self.gap_ms, self.keys = per_minute, gap_ms, keys
        self.fixed = (per_minute, gap_ms)
        self.told = []
        self._log = OrderedDict()

    @property
    def tracked(self):
        return len(self._log)

    def reconfigure(self, policy):
        self.told.append(policy.version)
        if self.fixed[0] is None:
            self.per_minute = policy.max_switches_per_min
        if self.fixed[1] is None:
            self.gap_ms = policy.switch_cooldown_ms

    def check(self, key, now_ms):
        times = [t for t in self._log.get(key, ()) if now_ms - t < 60000]
        if times and now_ms - times[-1] < self.gap_ms:
            return "COOLDOWN_ACTIVE"
        if len(times) >= self.per_minute:
            return "SWITCH_RATE_LIMITED"
        return None

    def record(self, key, now_ms):
        if key not in self._log and len(self._log) >= self.keys:
            self._log.popitem(last=False)
        times = [t for t in self._log.pop(key, ()) if now_ms - t < 60000]
        self._log[key] = times + [now_ms]

    def forget(self, key):
        self._log.pop(key, None)


@implementer(IOwnershipBackend)
class Undeclared:
    """Everything but ``shared`` and ``healthy``."""

    node_id = "x"

    def claim(self, session_id, record, expected_token): pass
    def renew(self, session_id, token, record): pass
    def release(self, session_id, token): pass
    def get(self, session_id): pass
    def watch(self, session_id, callback): pass
    def start(self): pass
    def close(self): pass


sliding = PluginSpec("sliding-log", IRateLimitPolicy, "twisted.plugins.{module}:SlidingLog", "x")
undeclared = PluginSpec("undeclared", IOwnershipBackend, "twisted.plugins.{module}:Undeclared", "x")
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    directory = tmp_path / "dropins"
    directory.mkdir()
    module = f"jumping_test_seam_{abs(hash(str(tmp_path))) % 10**8}"
    (directory / f"{module}.py").write_text(textwrap.dedent(THIRD_PARTY).format(module=module))
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(directory)])
    try:
        yield module
    finally:
        sys.modules.pop(f"twisted.plugins.{module}", None)
        if hasattr(twisted.plugins, module):
            delattr(twisted.plugins, module)


class TestThirdPartyPolicyPassesTheMixin(RateLimitPolicyTests):
    @pytest.fixture(autouse=True)
    def _installed(self, third_party: str) -> None:
        pass

    def make_policy(self, *, max_per_min: int, cooldown_ms: int, max_keys: int) -> Any:
        return plugin.load(
            IRateLimitPolicy, "sliding-log", per_minute=max_per_min, gap_ms=cooldown_ms,
            keys=max_keys,
        )  # fmt: skip

    def make_policy_following(self, *, max_keys: int) -> Any:
        return plugin.load(IRateLimitPolicy, "sliding-log", keys=max_keys)


class FakeTun:
    def __init__(self, *a: object, **k: object) -> None:
        self.fd = -1

    def close(self) -> None:
        pass


def _client_config(tmp_path: Path, rate_limit: str, cap: int = 5) -> Path:
    keys.write_keypair(tmp_path / "c.key")
    gw = keys.encode_key(keys.public_key(keys.generate_private_key()))
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[node]
role = "client"
node_id = "c1"
private_key = "c.key"
[tun]
name = "jseam0"
address = "10.99.0.2/24"
[gateway]
public_key = "{gw}"
[[gateway.endpoints]]
transport = "udp"
host = "127.0.0.1"
port = 9
[policy]
version = "v{cap}"
max_switches_per_min = {cap}
switch_cooldown_ms = 700
{rate_limit}
"""
    )
    return conf


def test_a_third_party_policy_runs_in_a_node_and_follows_reloads(
    tmp_path: Path, third_party: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "TunDevice", FakeTun)
    conf = _client_config(tmp_path, '[rate_limit]\npolicy = "sliding-log"\ngap_ms = 900\n')
    svc = NodeService(load_config(conf))
    svc.prepare()
    svc.core = svc.built  # serving (what _serve does once every plugin started)
    try:
        lim = svc.core.switch_limiter  # type: ignore[union-attr]
        assert type(lim).__name__ == "SlidingLog"
        assert lim.told == ["v5"], "the node tells the plugin its policy when it is built"
        assert (lim.per_minute, lim.gap_ms) == (5, 900)
        conf.write_text(conf.read_text().replace("= 5", "= 3").replace('"v5"', '"v3"'))
        assert svc.reload_policy()
        assert lim.told == ["v5", "v3"], "and again after a reload"
        assert (lim.per_minute, lim.gap_ms) == (3, 900), "its own option holds"
        assert not hasattr(lim, "max_per_min") and not hasattr(lim, "cooldown_ms")
    finally:
        svc._close_all()


def test_a_reload_keeps_the_limits_the_rate_limit_table_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "TunDevice", FakeTun)
    conf = _client_config(tmp_path, "[rate_limit]\nmax_per_min = 2\n")
    svc = NodeService(load_config(conf))
    svc.prepare()
    svc.core = svc.built  # serving (what _serve does once every plugin started)
    try:
        lim = svc.core.switch_limiter  # type: ignore[union-attr]
        assert (lim.max_per_min, lim.cooldown_ms) == (2, 700)
        conf.write_text(conf.read_text().replace("= 700", "= 300").replace("= 5", "= 9"))
        assert svc.reload_policy()
        assert (lim.max_per_min, lim.cooldown_ms) == (2, 300)
    finally:
        svc._close_all()


def test_reconfigure_keeps_history_under_a_lower_cap() -> None:
    lim = SwitchLimiter(max_keys=10)
    lim.reconfigure(Policy(max_switches_per_min=5, switch_cooldown_ms=10))
    for t in range(0, 50, 10):
        lim.record("s", t)
    assert lim.check("s", 60) == "SWITCH_RATE_LIMITED"
    lim.reconfigure(Policy(max_switches_per_min=2, switch_cooldown_ms=10))
    assert lim.check("s", 60) == "SWITCH_RATE_LIMITED"
    assert lim.tracked == 1


class QuorumLost(OwnershipUnavailable):
    """An unavailability whose class name does not say so."""


class UnavailableLooking(OwnershipConflict):
    """A conflict whose class name looks like unavailability."""


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (OwnershipConflict("taken"), "conflict"),
        (OwnershipUnavailable("no quorum"), "unavailable"),
        (QuorumLost("no quorum"), "unavailable"),
        (UnavailableLooking("stale token"), "conflict"),
        (RuntimeError("a backend bug"), "unavailable"),
    ],
)
def test_ownership_failures_are_classified_by_type(exc: Exception, error: str) -> None:
    assert ownership_error(Failure(exc)) == error


def test_a_backend_without_shared_and_healthy_is_refused_by_name(third_party: str) -> None:
    with pytest.raises(PluginError) as info:
        plugin.load(IOwnershipBackend, "undeclared")
    msg = str(info.value)
    assert msg.startswith("ownership backend plugin 'undeclared' does not provide"), msg
    assert "shared" in msg or "healthy" in msg, msg


def test_the_service_reads_no_undeclared_plugin_attribute() -> None:
    """Every attribute the service and the core read from a plugin through ``getattr`` with
    a default is a guess at a contract; the seam declares them instead."""
    import re

    root = Path(node_module.__file__).resolve().parent.parent
    offenders = []
    for path in [*root.joinpath("service").glob("*.py"), *root.joinpath("core").glob("*.py")]:
        text = path.read_text()
        for m in re.finditer(r"getattr\((self\.ownership|backend|limiter|sink)\b", text):
            offenders.append(f"{path.name}: {m.group(0)}")
    assert not offenders, offenders
