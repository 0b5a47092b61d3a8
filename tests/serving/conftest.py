"""Fixtures for the serving tests: the shared ``tiny_model_dir`` lives in tests/conftest.py."""
