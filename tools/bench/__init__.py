"""Benchmarks: `meshelect bench core|failover|idle|gateway` (see tools/bench/cli.py)."""
