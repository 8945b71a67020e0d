"""Tests of kilotok.loader (a package, so that test_registry may share its name with the models')."""
