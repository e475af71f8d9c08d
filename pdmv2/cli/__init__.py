"""The ``pdmv2`` command line (an edge: argument parsing and printing, no protocol logic)."""
