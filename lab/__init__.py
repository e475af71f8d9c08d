"""The lab: topologies built with Mininet, and a small namespace helper for tests and benchmarks."""
