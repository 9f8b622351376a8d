"""A shim for tools that look for setup.py; the project is described in pyproject.toml."""

from setuptools import setup

setup()
