"""Errors the phantom raises on purpose.

The phantom lives under ``models/`` and must import without ``node``, so it has
its own small root; :class:`PhantomSpecError` is also a ``ValueError`` so callers
that only know the standard library still catch a bad spec.
"""

from __future__ import annotations


class PhantomError(Exception):
    """Root of every error the phantom generator raises deliberately."""


class PhantomSpecError(PhantomError, ValueError):
    """A spec (or CLI argument) asks for something the phantom cannot build."""
