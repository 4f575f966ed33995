"""The one JSON log shape of the service and the jobs (SPEC §6.4): mozlog, one object per line.

``{"Timestamp": ns, "Type": <logger name>, "Logger": "taar", "Hostname", "EnvVersion": "2.0",
"Severity": <syslog level>, "Pid", "Fields": {"msg": ..., <extras>}}``. Everything a
caller passes in ``extra`` lands in ``Fields``; a ``fields`` dict (the jobs'
convention, ``extra={"fields": {...}}``) is merged in flat, and the formatter's
``context`` (a job's name, date and seed) is added to every record.
:class:`RateLimitedLog` lets a repeated failure through once per interval with
the number suppressed since (a store outage must not write a line per request).

Standard library only, so that every package (``taar_web``, ``taar_etl``, jobs)
can use it without pulling in the web stack.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback

ENV_VERSION = "2.0"
LOGGER_NAME = "taar"
#: Python level -> syslog severity.
SYSLOG_SEVERITY = {50: 2, 40: 3, 30: 4, 20: 6, 10: 7}
DEFAULT_SEVERITY = 7
#: Default interval of :class:`RateLimitedLog`: one report a minute per process.
LOG_INTERVAL_SECONDS = 60.0
# LogRecord attributes that are not caller-provided fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class MozlogFormatter(logging.Formatter):
    """Formats a record as one mozlog JSON line.

    Parameters
    ----------
    context : dict, optional
        Fields added to every record (record fields win on a clash).
    logger_name : str, default ``"taar"``
        The ``Logger`` value.
    """

    def __init__(self, context: dict | None = None, logger_name: str = LOGGER_NAME):
        super().__init__()
        self.context = dict(context or {})
        self.logger_name = logger_name
        self.hostname = socket.gethostname()

    def fields(self, record: logging.LogRecord) -> dict:
        """The ``Fields`` object of ``record``."""
        fields = dict(self.context)
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS:
                continue
            if key == "fields" and isinstance(value, dict):
                fields.update(value)
            else:
                fields[key] = value
        message = record.getMessage()
        if message:
            fields["msg"] = message
        if record.exc_info:
            fields["error"] = repr(record.exc_info[1])
            fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return fields

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "Timestamp": int(record.created * 1e9),
            "Type": record.name,
            "Logger": self.logger_name,
            "Hostname": self.hostname,
            "EnvVersion": ENV_VERSION,
            "Severity": SYSLOG_SEVERITY.get(record.levelno, DEFAULT_SEVERITY),
            "Pid": record.process,
            "Fields": self.fields(record),
        }, default=str)


class RateLimitedLog:
    """Lets one report through per ``interval_s``; counts the rest for the next report."""

    def __init__(self, interval_s: float = LOG_INTERVAL_SECONDS, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """``None`` to stay quiet, else the number of reports suppressed since the last one."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.interval_s:
                self._suppressed += 1
                return None
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
            return suppressed
