"""Build of the optional native data path (pdmv2/native/_datapath.c); everything else is in pyproject.toml.

The extension needs gcc, python3-dev, libnetfilter-queue-dev and libssl-dev (make deps installs them).
It is optional: when it cannot be built, `pip install -e .` still succeeds and the agent runs the
Python data path (it says so in its log).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pdmv2.native._datapath",
            sources=["pdmv2/native/_datapath.c"],
            libraries=["netfilter_queue", "nfnetlink", "crypto"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
