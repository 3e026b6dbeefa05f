"""Durations with units: ``"40ep"``, ``"500it"``, ``"2ep100it"``.

Training lengths, rewind points and milestones are all durations. They are converted to
iterations in exactly one place, :meth:`Duration.iterations`, with the data set's
iterations per epoch (``ceil(train examples / batch size)``).
"""

import re
from dataclasses import dataclass

from imp.base.errors import UserError

_PATTERN = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


@dataclass(frozen=True, order=False)
class Duration:
    """A length of training: ``epochs`` whole epochs plus ``iterations`` extra iterations."""

    epochs: int = 0
    iterations: int = 0

    def __post_init__(self):
        if self.epochs < 0 or self.iterations < 0:
            raise UserError(f"duration {self.epochs}ep{self.iterations}it is negative")

    @classmethod
    def parse(cls, text: "str | int | Duration") -> "Duration":
        """Parse ``"40ep"``, ``"500it"``, ``"2ep100it"``; a bare integer means epochs."""
        if isinstance(text, Duration):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(epochs=text)
        if not isinstance(text, str):
            raise UserError(f"expected a duration like '40ep' or '500it', got {text!r}")
        match = _PATTERN.match(text.strip())
        if not text.strip() or match is None:
            raise UserError(
                f"bad duration {text!r}: write whole epochs and/or iterations, "
                "e.g. '40ep', '500it' or '2ep100it'"
            )
        epochs, iterations = match.groups()
        return cls(int(epochs or 0), int(iterations or 0))

    def iterations_at(self, iterations_per_epoch: int) -> int:
        """The total number of iterations for a data set with this many iterations per epoch."""
        if iterations_per_epoch <= 0:
            raise ValueError(f"iterations_per_epoch must be positive, got {iterations_per_epoch}")
        return self.epochs * iterations_per_epoch + self.iterations

    def canonical(self, iterations_per_epoch: int) -> "Duration":
        """The one spelling of this length for a data set with this many iterations per
        epoch: whole epochs (``"1ep"``) when it is a whole number of epochs, else plain
        iterations (``"500it"``). ``"23it"``, ``"1ep"`` and ``"0ep23it"`` are the same work
        at 23 iterations per epoch, and all become ``"1ep"``."""
        total = self.iterations_at(iterations_per_epoch)
        if total % iterations_per_epoch == 0:
            return Duration(epochs=total // iterations_per_epoch)
        return Duration(iterations=total)

    def __str__(self) -> str:
        if self.epochs and self.iterations:
            return f"{self.epochs}ep{self.iterations}it"
        if self.epochs:
            return f"{self.epochs}ep"
        return f"{self.iterations}it"
