"""A progress bar that is a no-op when disabled (tqdm when enabled)."""

from __future__ import annotations

from typing import Any


class Progress:
    """``step(i)`` advances by one; ``close()`` ends the bar.  Disabled: does nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False)

    def step(self, _i: int = 0) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
