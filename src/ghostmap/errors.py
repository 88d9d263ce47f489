"""The one exception type users see.

Every problem with the user's input (a missing file, a label outside the scan, a model
that does not fit the data) raises :class:`GhostmapError` with a one-line message that
names the problem. The CLI prints that line and exits non-zero; Python users catch it.
"""


class GhostmapError(Exception):
    """A problem with the user's data, labels, model or options, told in one line."""
