"""Console progress for long CLI work (`run`, `ingest`): done / total, rate, rows/s and ETA.

On a terminal it is a tqdm bar on stderr; otherwise (logs, pipes, CI) a plain line at most every `every_s`
seconds and one at the end, so captured output stays short and readable. Callers count units (files,
partition-days, stages) and may add rows as they learn them:

    with Progress(total=len(files), unit="file", desc="ingest") as bar:
        for f in files:
            rows = ingest_one(f)
            bar.update(1, rows=rows)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def _fmt_s(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress over `total` units; a tqdm bar on a TTY, plain throttled lines elsewhere."""

    def __init__(self, total: int, unit: str = "item", desc: str = "", stream: IO[str] | None = None,
                 tty: bool | None = None, every_s: float = 10.0):
        self.total, self.unit, self.desc = int(total), unit, desc
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.tty = tty
        self.every_s = every_s
        self.done = 0
        self.rows = 0
        self.t0 = time.monotonic()
        self._last_line = self.t0
        self._bar: Any = None
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True,
                             leave=True, smoothing=0.1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rate_text(self) -> str:
        """'3/10 partition-days (30%), 1,234 rows/s, ETA 01:10' (the plain-line text)."""
        el = time.monotonic() - self.t0
        parts = [f"{self.done}/{self.total} {self.unit}s" + (f" ({self.done / self.total:.0%})" if self.total else "")]
        if self.rows and el > 0:
            rate = self.rows / el
            parts.append(f"{rate:,.0f} rows/s" if rate >= 10 else f"{rate:.2g} rows/s")
        if 0 < self.done < self.total and el > 0:
            parts.append(f"ETA {_fmt_s(el / self.done * (self.total - self.done))}")
        parts.append(f"elapsed {_fmt_s(el)}")
        return ", ".join(parts)

    def update(self, n: int = 1, rows: int | None = None, note: str | None = None) -> None:
        """n more units done (and `rows` more rows processed); `note` names what just finished."""
        self.done += n
        if rows:
            self.rows += int(rows)
        if self._bar is not None:
            el = time.monotonic() - self.t0
            post = {}
            if self.rows and el > 0:
                post["rows/s"] = f"{self.rows / el:,.0f}"
            if note:
                post["last"] = note
            if post:
                self._bar.set_postfix(post, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.done >= self.total or now - self._last_line >= self.every_s:
            self._last_line = now
            head = f"{self.desc}: " if self.desc else ""
            tail = f" [{note}]" if note else ""
            print(f"{head}{self.rate_text()}{tail}", file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A line of output that does not break the bar."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def track(items: Iterable[T], total: int | None = None, unit: str = "item", desc: str = "",
          stream: IO[str] | None = None, tty: bool | None = None) -> Iterator[T]:
    """Iterate `items` with progress (one unit per item); for callers without row counts."""
    seq = items if total is not None else list(items)
    n = total if total is not None else len(seq)  # type: ignore[arg-type]
    with Progress(n, unit=unit, desc=desc, stream=stream, tty=tty) as bar:
        for it in seq:
            yield it
            bar.update(1)
