"""The one error type that means "the user asked for something that cannot be done".

Everything the command line catches and prints as one line (exit code 2) derives from
:class:`UserError`; any other exception is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input: a config key, a value, a missing data file, a locked run."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
