"""The one exception type users see.

Every problem with the user's input (a missing file, a label outside the scan, a model
that does not fit the data) raises :class:`GhostmapError` with a one-line message that
names the problem. The CLI prints that line and exits non-zero; Python users catch it.
"""


class GhostmapError(Exception):
    """A problem with the user's data, labels, model or options, told in one line.

    Raised with one argument, the message: one line that names the problem and the file
    or option it is in.

    Examples
    --------
    >>> import ghostmap as gm
    >>> try:
    ...     gm.read_labels("no-such-file.csv")
    ... except gm.GhostmapError as exc:
    ...     print("error:", exc)  # doctest: +ELLIPSIS
    error: ...no-such-file.csv...
    """
