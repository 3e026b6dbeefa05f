"""Progress bars: tqdm's, or silent stand-ins where tqdm is not installed.

The device check (``python -m runs.gpu_check``) must run where only torch and the
scientific stack are installed; tqdm is not part of that, so the engine imports its
progress bar from here. Without tqdm, bars draw nothing and everything else is the same.
"""

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised by tests that hide tqdm
    class tqdm:  # noqa: N801 (tqdm's own name)
        """The part of tqdm the engine uses, drawing nothing."""

        def __init__(self, iterable=None, *args, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def update(self, n: int = 1) -> None:
            pass

        def set_postfix(self, *args, **kwargs) -> None:
            pass

        def close(self) -> None:
            pass

__all__ = ["tqdm"]
