"""Helpers the tests (and benchmarks) share: loopback ports, waiting, a local PostgreSQL."""
