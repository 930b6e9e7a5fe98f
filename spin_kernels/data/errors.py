"""The one exception type of the data pipeline: bad data, reported in words a user can act on."""


class DataError(ValueError):
    """A dataset problem the user must fix (missing or empty split, unreadable file, class-count mismatch)."""
