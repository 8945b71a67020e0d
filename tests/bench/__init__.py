"""Tests of kilotok.bench, one file per module (a package, so that test_serve and test_soak may share their
names with tests of the server and the CLI)."""
