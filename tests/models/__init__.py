"""Tests of kilotok.models (a package, so that test_registry may share its name with the loader's)."""
