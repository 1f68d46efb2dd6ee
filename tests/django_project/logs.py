"""One line per record: the message's first line with the id, so a traceback cannot split a record."""

from __future__ import annotations

import logging

FORMAT = "%(request_id)s|%(name)s|%(message)s"


class OneLine(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).split("\n", 1)[0]
