"""The one root exception of the node and its direct families.

Every error we raise on purpose derives from :class:`NodeError`, so the edges
(the DICOM handlers, the CLI, the worker loop) can translate *our* failures into
a status, an exit code or a job error text, and let genuine bugs surface.
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node raises deliberately."""


class ConfigError(NodeError):
    """The configuration is invalid; the message names the key."""


class StorageError(NodeError):
    """An instance could not be stored or read back."""


class InvalidUIDError(StorageError):
    """A UID is not a valid DICOM UID and must not become part of a path."""


class DiskFullError(StorageError):
    """The storage volume is past its watermark or full."""


class DatabaseError(NodeError):
    """The database is unreachable or its schema is not the one this code expects."""


class GroupingError(NodeError):
    """A study could not be turned into a multi-view input."""


class VolumeError(NodeError):
    """A view could not be loaded into a volume (geometry, decoding)."""
