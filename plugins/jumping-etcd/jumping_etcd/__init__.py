"""Jumping's ``etcd`` ownership backend (SPEC section 5): see :mod:`jumping_etcd.backend`."""
