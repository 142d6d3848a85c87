"""What a long-running command prints, and where everything else goes (docs/architecture.md, "What reaches the
terminal, and what driver.log").

Under the live view the terminal shows cktf's own lines and warnings; the log records of Ray, MLflow and Optuna,
Ray's start-up output and the trials' diagnostics go to ``driver.log`` in the run's folder (:class:`RunLog`); an error
another library logs reaches the terminal as one line naming that file (:class:`ErrorSummary`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..results.store import StudyStore

log = logging.getLogger(__name__)

#: the top-level package, whose loggers' warnings the live view keeps
PACKAGE = __name__.split(".")[0]
#: how a run talks: the compact live view, Ray's own tables, or nothing but the final lines
VIEWS = ("live", "ray", "quiet")
LOG_FILE = "driver.log"


class ConsoleFilter(logging.Filter):
    """What the terminal handlers show under the live view: cktf's warnings and errors. Everything else goes to the
    run's log file; another library's errors reach the terminal as one line (:class:`ErrorSummary`)."""

    def __init__(self, others_errors: bool = False):
        super().__init__()
        self.others_errors = others_errors  # before the run's log exists, another library's errors are shown

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] == PACKAGE:
            return record.levelno >= logging.WARNING
        return self.others_errors and record.levelno >= logging.ERROR


class ErrorSummary(logging.StreamHandler):
    """Another library's error (Ray's, MLflow's) in the terminal as one line pointing at ``driver.log``, where the
    record is whole with its traceback: the terminal shows what may need acting on, not a library's internals."""

    def __init__(self, log_path: str):
        super().__init__(sys.stderr)
        self.setLevel(logging.ERROR)
        self.log_path = log_path
        self.addFilter(lambda record: record.name.split(".")[0] != PACKAGE)

    def format(self, record: logging.LogRecord) -> str:
        first = (record.getMessage().strip().splitlines() or [""])[0].rstrip(" :")
        return f"{record.name}: {first[:200]} (details in {self.log_path})"


def quiet_console() -> ConsoleFilter:
    """Put a :class:`ConsoleFilter` on the root logger's terminal handlers (``cktf tune``'s live view)."""
    flt = ConsoleFilter(others_errors=True)
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler:
            h.addFilter(flt)
    return flt


#: imported before the run's log is set up: each adds a terminal handler of its own when imported
LIBRARIES = ("ray", "ray.tune", "mlflow", "optuna")


class RunLog:
    """Send the driver's log records (cktf's, Ray's, MLflow's, Optuna's) to ``driver.log`` in the run's folder (a
    local temporary file for a remote folder, uploaded at the end); under the live view the terminal keeps cktf's
    warnings (:class:`ConsoleFilter`) and one line per error of another library (:class:`ErrorSummary`)."""

    OWN_HANDLERS = ("ray", "mlflow", "optuna")  # libraries that log through handlers of their own

    def __init__(self, store: StudyStore, view: str = "live"):
        self.store, self.view = store, view

    def __enter__(self) -> str:
        import importlib
        import tempfile

        for name in LIBRARIES:  # their import adds their own terminal handlers, which the filter must see
            importlib.import_module(name)

        local = self.store.local_path(LOG_FILE)
        if local is None:
            local = Path(tempfile.mkdtemp(prefix="cktf-log-")) / LOG_FILE
        local.parent.mkdir(parents=True, exist_ok=True)
        self.path = local
        self.handler = logging.FileHandler(local)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.filter = ConsoleFilter()
        self.filtered: list[logging.Handler] = []
        logging.getLogger().addHandler(self.handler)
        for name in self.OWN_HANDLERS:
            lg = logging.getLogger(name)
            lg.addHandler(self.handler)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                self.filtered.append(lg)  # remembered only to restore its level
        self._levels = {lg.name: lg.level for lg in self.filtered}
        for lg in self.filtered:
            lg.setLevel(logging.INFO)
        self.summary: ErrorSummary | None = None
        if self.view != "ray":
            for h in self.console_handlers():
                h.addFilter(self.filter)
            self.summary = ErrorSummary(str(local))
            logging.getLogger().addHandler(self.summary)
            for name in self.OWN_HANDLERS:  # those that do not pass their records on to the root's handlers
                if not logging.getLogger(name).propagate:
                    logging.getLogger(name).addHandler(self.summary)
        return str(local)

    def reattach(self) -> None:
        """Put the log file (and the one-line summary of errors) back on the libraries' loggers: ``ray.init`` clears
        the "ray" logger's handlers, after which Python's last-resort handler would print its warnings on the
        terminal."""
        for name in self.OWN_HANDLERS:
            lg = logging.getLogger(name)
            if self.handler not in lg.handlers:
                lg.addHandler(self.handler)
            if self.summary is not None and not lg.propagate and self.summary not in lg.handlers:
                lg.addHandler(self.summary)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)

    def console_handlers(self) -> list[logging.Handler]:
        """Every terminal handler of every logger (Ray's, MLflow's, the root's)."""
        loggers = [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        return [
            h
            for lg in loggers
            for h in lg.handlers
            if isinstance(h, logging.StreamHandler)
            and not isinstance(h, (logging.FileHandler, ErrorSummary))
            and not type(h).__module__.startswith("_pytest")  # a test's log capture sees everything
        ]

    def __exit__(self, *exc: Any) -> None:
        for lg in (logging.getLogger(), *(logging.getLogger(n) for n in self.OWN_HANDLERS)):
            lg.removeHandler(self.handler)
            if self.summary is not None:
                lg.removeHandler(self.summary)
        for h in self.console_handlers():
            h.removeFilter(self.filter)
        for lg in self.filtered:
            lg.setLevel(self._levels[lg.name])
        self.handler.close()
        if self.store.local_path(LOG_FILE) is None:
            try:
                self.store.upload(self.path.parent, "logs")
            except Exception as err:  # the log is a diagnostic: never fail a run for it
                log.info("driver log not uploaded: %s", err)


@contextlib.contextmanager
def stderr_to(path: str | None):
    """Point file descriptor 2 at ``path`` for the block: the processes Ray starts inherit it, so what they print
    at start-up (token hints, warnings) goes to the run's log, not to the live view."""
    if not path:
        yield
        return
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


__all__ = ["LOG_FILE", "PACKAGE", "VIEWS", "ConsoleFilter", "ErrorSummary", "RunLog", "quiet_console", "stderr_to"]
