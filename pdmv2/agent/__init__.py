"""The agent (an edge): PDMv2 on a host's kernel IPv6 traffic through NFQUEUE."""
