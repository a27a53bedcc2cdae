"""torch's own logging during a compile: kept for the report and ``debug_dir``, off the terminal.

torch gives its loggers (``torch``, ``torch._dynamo``, ``torch.export``, ``torch.fx...``,
``torch.onnx``, ...) stderr handlers of their own, so a refused export floods the terminal with
tracebacks that fxtrt already turns into one error. While :func:`collect_torch_log` is open those
handlers are swapped for one that keeps the records; on exit every logger has its handlers and
``propagate`` back as they were (levels are never touched), and a collection opened inside
another one hands its records on to it.

Example::

    with collect_torch_log() as torch_log:
        torch.export.export(model, inputs)
    torch_log.stage()      # {"records": 2, "warnings": ["ERROR torch._subclasses.fake_tensor: ..."]}
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Loggers whose records are collected, with their children.
ROOTS = ("torch", "onnxscript", "onnx_ir")
# torch's structured trace (TORCH_TRACE) writes files of its own, never the terminal: left alone.
_SKIP = ("torch.__trace",)
LOG_FILE = "torch_log.txt"
log = logging.getLogger(__name__)
_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


class TorchLog(logging.Handler):
    """A handler that keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.WARNING, limit: int = 20) -> list[str]:
        """The first line of each record at ``level`` or above, each once."""
        out: list[str] = []
        for r in self.records:
            if r.levelno >= level:
                first = (r.getMessage().strip().splitlines() or [""])[0][:300]
                line = f"{r.levelname} {r.name}: {first}"
                if line not in out:
                    out.append(line)
        return out[:limit]

    def text(self) -> str:
        """Every record in full, tracebacks included."""
        return "".join(_FORMAT.format(r) + "\n" for r in self.records)

    def stage(self) -> dict[str, Any]:
        """``report.stages["torch_log"]``: how many records, and the warnings and errors among them."""
        return {"records": len(self.records), "warnings": self.lines()}

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOG_FILE
        path.write_text(self.text())
        return path


def _loggers() -> list[logging.Logger]:
    """The root loggers, and every existing child that would print by itself (its own handlers,
    or no propagation and so Python's last-resort handler)."""
    found = [logging.getLogger(name) for name in ROOTS]
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger) or name in ROOTS:
            continue
        if name.startswith(tuple(f"{r}." for r in ROOTS)) and not name.startswith(_SKIP):
            if lg.handlers or not lg.propagate:
                found.append(lg)
    return found


def keep_printed(logger: str, text: str) -> None:
    """What torch printed on stderr instead of logging it, as an INFO record of ``logger``: kept by
    the collection open on that logger, else in fxtrt's debug log (never on the terminal)."""
    record = logging.LogRecord(logger, logging.INFO, __file__, 0, "printed on stderr:\n%s", (text,), None)
    keepers = [h for h in logging.getLogger(logger).handlers if isinstance(h, TorchLog)]
    for keeper in keepers:
        keeper.handle(record)
    if not keepers:
        log.debug("%s %s", logger, record.getMessage())


@contextmanager
def collect_torch_log() -> Iterator[TorchLog]:
    """Collect what torch, onnxscript and onnx_ir log (at the levels they are set to) instead of
    printing it; restore their handlers and ``propagate`` on exit."""
    collector = TorchLog()
    saved = []
    for lg in _loggers():
        saved.append((lg, lg.handlers, lg.propagate))
        lg.handlers = [collector]
        lg.propagate = False
    try:
        yield collector
    finally:
        outer: list[TorchLog] = []
        for lg, handlers, propagate in reversed(saved):
            added = [h for h in lg.handlers if h is not collector and h not in handlers]  # attached meanwhile
            lg.handlers = [*handlers, *added]
            lg.propagate = propagate
            outer += [h for h in handlers if isinstance(h, TorchLog) and h not in outer]
        for enclosing in outer:
            enclosing.records += collector.records
