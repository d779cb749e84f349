"""Helpers shared by the test suite (real etcd launcher, ...)."""
