"""A progress bar on stderr for a run (tqdm, a dependency of huggingface_hub in the test extras),
or nothing when tqdm is missing or disabled."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

from benchmarks.loadgen.records import RequestRecord


class Progress:
    """Context manager; ``callback`` goes to ``run_load(on_progress=...)``."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._bar: Any = None
        self._failed = 0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=description, unit="req", file=sys.stderr,
                             dynamic_ncols=True)

    def callback(self) -> Callable[[RequestRecord], None]:
        def update(record: RequestRecord) -> None:
            if self._bar is None:
                return
            if not record.success:
                self._failed += 1
                self._bar.set_postfix(failed=self._failed, refresh=False)
            self._bar.update(1)

        return update

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()
