"""``python -m lab web``: a live, read-only web view of a running lab (topology, agents, flows, packets)."""
