"""The optional C parts of the data plane (jumping/core/_dataplane.c, see jumping/core/aead.py,
the TUN and UDP read loops and the initiation gate, jumping/service/_fastio.c):
built where a C compiler and OpenSSL's headers exist (deploy/setup.sh installs them); where
the build fails, the install goes on without it and the pure-Python twin runs."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "jumping.core._dataplane",
            ["jumping/core/_dataplane.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "jumping.service._fastio",
            ["jumping/service/_fastio.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
