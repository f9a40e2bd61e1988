"""Every public exception of Jumping, in one place."""

from __future__ import annotations


class JumpingError(Exception):
    """Base class: the message is one line meant for an operator."""


class ConfigError(JumpingError):
    """A configuration file is missing, malformed or has invalid values."""


class KeyFileError(JumpingError):
    """A key file is missing, unreadable, malformed or too permissive."""


class PluginError(JumpingError):
    """A plugin name is unknown, ambiguous, or its object does not provide the interface."""


class OwnershipConflict(JumpingError):
    """A compare-and-swap on a session's ownership record failed (stale token, taken)."""


class OwnershipUnavailable(JumpingError):
    """The ownership backend cannot be reached (no quorum, network, timeout)."""


from jumping.core.policy import PolicyError  # noqa: E402  (re-exported)

__all__ = [
    "ConfigError",
    "JumpingError",
    "KeyFileError",
    "OwnershipConflict",
    "OwnershipUnavailable",
    "PluginError",
    "PolicyError",
]
