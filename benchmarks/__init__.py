"""Benchmarks: scripts that time library hot paths (not run by pytest)."""
