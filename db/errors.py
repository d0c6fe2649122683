"""Errors the store raises: each one sentence naming the database and the fix."""

from runtime.errors import UserError


class StoreError(UserError):
    """The database cannot be opened, read or written."""


class SchemaOutOfDate(StoreError):
    """The database is at an older (or unknown) revision than this tool needs."""


class DatabaseLocked(StoreError):
    """Another process held the write lock for longer than we wait."""


class NotFound(StoreError):
    """An id that is not in the store."""
