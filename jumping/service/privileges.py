"""
Dropping root after the TUN device and the listeners are open, keeping only the Linux
capabilities the node still needs.

twistd does the uid/gid switch itself (``--uid/--gid``, or ``[node] user``/``group``, which
:mod:`jumping.tap` hands to twistd) between ``privilegedStartService`` and
``startService``. A plain ``setuid`` from root clears every capability, so before it the
node sets ``PR_SET_KEEPCAPS`` (:func:`keep_capabilities_across_setuid`); after it
:func:`confine` reduces the permitted and effective sets to the configured ones
(``CAP_NET_ADMIN`` by default: ``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE`` on sockets a client
opens after start), clears the inheritable and ambient sets, sets ``no_new_privs``, and
checks that no uid, gid or supplementary group 0 is left.

Linux only; ``capget``/``capset``/``prctl`` are called through ``ctypes`` (three system
calls do not justify a dependency).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass

#: capabilities a node may keep after the drop, by name
KNOWN = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
DEFAULT_KEEP = ("CAP_NET_ADMIN",)

_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The privileges are not what was asked for; the message says what is wrong."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    if libc.prctl(option, arg, arg3, 0, 0) != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}): {os.strerror(e)}")


def _get() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    hdr = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc().capget(ctypes.byref(hdr), data) != 0:
        raise PrivilegeError(f"capget: {os.strerror(ctypes.get_errno())}")

    def mask(field: str) -> int:
        return int(getattr(data[0], field)) | int(getattr(data[1], field)) << 32

    return mask("effective"), mask("permitted"), mask("inheritable")


def _set(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    for i, shift in ((0, 0), (1, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _libc().capset(ctypes.byref(hdr), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")


def names(mask: int) -> list[str]:
    by_number = {v: k for k, v in KNOWN.items()}
    return [by_number.get(b, f"cap{b}") for b in range(64) if mask >> b & 1]


def mask_of(capabilities: Iterable[str]) -> int:
    m = 0
    for name in capabilities:
        m |= 1 << KNOWN[name]
    return m


def keep_capabilities_across_setuid() -> None:
    """Before twistd's ``setuid``: keep the permitted set through it (``PR_SET_KEEPCAPS``),
    so that :func:`confine` can raise the capabilities to keep again afterwards."""
    _prctl(_PR_SET_KEEPCAPS, 1)


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    effective: list[str]


def confine(keep: Iterable[str], expect: tuple[int, int] | None) -> Identity:
    """
    After the drop: permitted and effective = ``keep`` (of what is still permitted), no
    inheritable or ambient capabilities, ``no_new_privs``; with ``expect = (uid, gid)``,
    check that real, effective and saved ids are those and that no group is 0.

    :raise PrivilegeError: an id or group is not what was asked for.
    """
    if expect is not None:
        uid, gid = expect
        ruid, euid, suid = os.getresuid()
        rgid, egid, sgid = os.getresgid()
        if {ruid, euid, suid} != {uid} or {rgid, egid, sgid} != {gid}:
            raise PrivilegeError(
                f"privilege drop incomplete: uids {ruid}/{euid}/{suid}, gids {rgid}/{egid}/{sgid};"
                f" expected uid {uid}, gid {gid}"
            )
        if 0 in os.getgroups():
            raise PrivilegeError("privilege drop incomplete: still in supplementary group 0")
    _prctl(_PR_SET_KEEPCAPS, 0)
    _eff, permitted, _inh = _get()
    wanted = mask_of(keep) & permitted
    _set(wanted, wanted, 0)
    try:
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    except PrivilegeError:
        pass  # kernels before 4.3 have no ambient set
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    effective, _p, _i = _get()
    return Identity(os.getuid(), os.getgid(), tuple(os.getgroups()), names(effective))


def has_capability(name: str) -> bool:
    try:
        effective, _p, _i = _get()
    except PrivilegeError:
        return False
    return bool(effective >> KNOWN[name] & 1)
