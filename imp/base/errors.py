"""The one error type that means "the user asked for something that cannot be done".

Everything the command line catches and prints as one line (exit code 2) derives from
:class:`UserError`; any other exception is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input: a config key, a value, a missing data file, a locked run."""


class Diverged(UserError):
    """Training went to a non-finite loss or weights: bad settings (say, the learning rate)."""


class Terminated(Exception):
    """The process was asked to stop (SIGTERM) and stopped cleanly; a rerun resumes."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word`` (fewest edits among the similar ones), or None."""
    choices = list(choices)
    similar = difflib.get_close_matches(word, choices, n=5, cutoff=0.6)
    if not similar:
        return None
    return min(similar, key=lambda choice: (_edits(word, choice), choice))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    choice = closest(word, choices)
    return f"; did you mean {choice!r}?" if choice else ""


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]
