"""Test support: real servers and readers shared by the test modules."""
