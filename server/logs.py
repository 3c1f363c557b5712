"""Logging set-up (text or JSON lines) and start-up progress: a bar on a terminal, log lines otherwise.
In JSON mode every line on stderr is one JSON object: no progress bars (ours or the Hugging Face
libraries'), warnings and the transformers logger go through the same handler, colour codes are dropped.
Text logs that are not a terminal carry no progress-bar frames either."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields (request_id, status, ...) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "message": _ANSI.sub("", record.getMessage())}
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if fmt == "json":
        _json_only()
    elif not sys.stderr.isatty():  # a log file or a collector: no progress-bar frames in it
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"


def _json_only() -> None:
    """Route what other libraries print on stderr through the JSON handler, and turn their bars off."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface-hub, and transformers' own bars
    os.environ["TQDM_DISABLE"] = "1"
    logging.captureWarnings(True)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()


def json_logging() -> bool:
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


class _Progress:
    def __init__(self, desc: str, total: int, log: logging.Logger):
        self.desc, self.total, self.log, self.done = desc, total, log, 0
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and not json_logging():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=True)

    def step(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)
        else:
            self.log.info("%s: [%d/%d] %s (%.1f s)", self.desc, self.done, self.total, what,
                          time.perf_counter() - self.started)


@contextmanager
def startup_progress(desc: str, total: int, log: logging.Logger) -> Iterator[_Progress]:
    progress = _Progress(desc, total, log)
    try:
        yield progress
    finally:
        if progress.bar is not None:
            progress.bar.close()
