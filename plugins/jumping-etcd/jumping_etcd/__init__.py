"""Jumping's ``etcd`` ownership backend (docs/protocol.md): see :mod:`jumping_etcd.backend`."""
