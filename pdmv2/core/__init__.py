"""The PDMv2 protocol, pure: no sockets, files, clocks, processes or threads, and no edge imports.

Time comes in as ``now_ns`` arguments, randomness as injected sources, packets and key files as
bytes and text.  Everything that does I/O lives beside this folder (pdmv2/agent, pdmv2/cli,
pdmv2/capture.py, pdmv2/keyfiles.py, pdmv2/regnet.py, pdmv2/regstore.py, ...) and imports from it,
never the other way.  tests/unit/test_core_purity.py checks every module here; docs/architecture.md
explains the split.  The public API is re-exported by ``pdmv2`` itself.
"""
