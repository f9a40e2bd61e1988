"""
Packet captures for the abuse harness (root, inside a namespace of the harness), through an
AF_PACKET socket with a classic BPF filter so only the packets wanted reach Python:

    capture.py replay --if ga --port 51820 --count 4096 --timeout 10 --out replay.frames
        sealed packets of the live session arriving at the gateway (UDP to --port), one
        datagram per record (a UDP GSO super-packet is cut at its segment size, read from
        the virtio-net header), as the frames file flood.c replays (frames.py)
    capture.py handshakes --if ca --port 51820 --duration 20 --out hs.jsonl
        every handshake message (first byte 1, 2 or 3: initiation, response, cookie reply,
        in Jumping and in WireGuard) to or from --port: one JSON line each with the kernel
        receive time, for the time a new client needs to complete its handshake
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frames import udp_packet, write_frames  # noqa: E402

ETH_P_ALL = 3
SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
VNET = struct.Struct("<BBHHHH")
GSO_UDP_L4 = 5


# ---------------------------------------------------------------------------- BPF
def _bpf(port: int, src_too: bool, handshakes_only: bool) -> bytes:
    """IPv4, UDP, not a fragment, destination port (or source port) ``port``, and with
    ``handshakes_only`` a first payload byte of 1..3. Offsets are from the Ethernet header."""
    ins: list[tuple[int, str | int, str | int, int]] = []
    ld_h, ld_b, ldx_msh, ld_h_ind, ld_b_ind = 0x28, 0x30, 0xB1, 0x48, 0x50
    jeq, jset, jgt, ret = 0x15, 0x45, 0x25, 0x06
    ins += [(ld_h, 0, 0, 12), (jeq, 0, "drop", 0x800), (ld_b, 0, 0, 23), (jeq, 0, "drop", 17),
            (ld_h, 0, 0, 20), (jset, "drop", 0, 0x1FFF), (ldx_msh, 0, 0, 14),
            (ld_h_ind, 0, 0, 16), (jeq, "port", 0 if src_too else "drop", port)]  # fmt: skip
    if src_too:
        ins += [(ld_h_ind, 0, 0, 14), (jeq, "port", "drop", port)]
    ins += [("port", 0, 0, 0)]  # label
    if handshakes_only:
        ins += [(ld_b_ind, 0, 0, 22), (jeq, "drop", 0, 0), (jgt, "drop", "accept", 3)]
    ins += [("accept", 0, 0, 0), (ret, 0, 0, 0x40000), ("drop", 0, 0, 0), (ret, 0, 0, 0)]
    labels: dict[str, int] = {}
    code: list[tuple[int, str | int, str | int, int]] = []
    for op, jt, jf, k in ins:
        if isinstance(op, str):
            labels[op] = len(code)
        else:
            code.append((op, jt, jf, k))
    out = b""
    for i, (op, jt, jf, k) in enumerate(code):
        t = labels[jt] - i - 1 if isinstance(jt, str) else jt
        f = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("HBBI", op, t, f, k)
    return out


_FILTERS: list[object] = []


def open_socket(ifname: str, port: int, src_too: bool, handshakes_only: bool) -> socket.socket:
    # protocol 0: nothing is queued before the filter and the vnet header option are set
    # (bind below starts the capture on the one interface)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    prog = _bpf(port, src_too, handshakes_only)
    import ctypes

    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    _FILTERS.append(buf)  # the kernel copied it, but keep it as long as the socket
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, ETH_P_ALL))  # (CPython applies htons to the protocol here)
    return s


def _datagrams(frame: bytes) -> tuple[bytes, list[bytes]]:
    """(IPv4 header + UDP header, UDP payloads) of one captured frame (vnet header first)."""
    if len(frame) < VNET.size + 14 + 28:
        return b"", []
    _flags, gso_type, _hl, gso_size, _cs, _co = VNET.unpack_from(frame)
    ip = frame[VNET.size + 14 :]
    ihl = (ip[0] & 0x0F) * 4
    head, payload = ip[: ihl + 8], ip[ihl + 8 :]
    if gso_type & 0x7F == GSO_UDP_L4 and gso_size:
        return head, [payload[o : o + gso_size] for o in range(0, len(payload), gso_size)]
    return head, [payload]


def _addr(head: bytes, off: int) -> str:
    return ".".join(str(b) for b in head[off : off + 4])


def capture_replay(a: argparse.Namespace) -> int:
    s = open_socket(a.ifname, a.port, False, False)
    s.settimeout(0.5)
    packets: list[bytes] = []
    deadline = time.monotonic() + a.timeout
    while len(packets) < a.count and time.monotonic() < deadline:
        try:
            frame, addr = s.recvfrom(70000)
        except TimeoutError:
            continue
        if addr[2] == PACKET_OUTGOING:
            continue
        head, pieces = _datagrams(frame)
        if len(head) < 28 or head[0] >> 4 != 4:
            continue
        ihl = (head[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", head, ihl)
        for p in pieces:
            if 16 <= len(p) <= 1472:
                packets.append(udp_packet(_addr(head, 12), sport, _addr(head, 16), dport, p))
    write_frames(Path(a.out), packets[: a.count])
    print(json.dumps({"captured": min(len(packets), a.count), "wanted": a.count}))
    return 0 if packets else 1


def capture_handshakes(a: argparse.Namespace) -> int:
    s = open_socket(a.ifname, a.port, True, True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    s.settimeout(0.2)
    end = time.monotonic() + a.duration
    with open(a.out, "w") as out:
        while not stop["now"] and time.monotonic() < end:
            try:
                frame, anc, _fl, addr = s.recvmsg(70000, socket.CMSG_SPACE(16))
            except (TimeoutError, InterruptedError):
                continue
            t = time.time()
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, ns = struct.unpack("qq", data[:16])
                    t = sec + ns * 1e-9
            head, pieces = _datagrams(frame)
            if len(head) < 28 or not pieces or not pieces[0]:
                continue
            ihl = (head[0] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", head, ihl)
            outgoing = dport == a.port
            out.write(json.dumps({
                "t": round(t, 6), "dir": "out" if outgoing else "in",
                "local_port": sport if outgoing else dport, "type": pieces[0][0],
                "len": len(pieces[0]),
            }) + "\n")  # fmt: skip
            out.flush()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--if", dest="ifname", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, default=4096)
    r.add_argument("--timeout", type=float, default=10)
    r.add_argument("--out", required=True)
    h = sub.add_parser("handshakes")
    h.add_argument("--if", dest="ifname", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--duration", type=float, default=30)
    h.add_argument("--out", required=True)
    a = ap.parse_args()
    return capture_replay(a) if a.cmd == "replay" else capture_handshakes(a)


if __name__ == "__main__":
    sys.exit(main())
