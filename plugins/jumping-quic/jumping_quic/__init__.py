"""Jumping's QUIC transport: each Jumping datagram travels in one QUIC DATAGRAM frame.

See README.md; the plugin is declared in ``twisted/plugins/jumping_quic.py``.
"""
