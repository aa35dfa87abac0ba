"""The restart-safe part of the MQTT outbox: undeliverable messages kept in an SQLite file (``mqtt.outbox_path``).

The outbox lives in memory (``MqttPublisher``); this store only mirrors the messages that have waited longer
than ``mqtt.outbox_sync_s``, so a connected broker that keeps up causes no disk writes at all (an SD card
wears out), and a kill -9 or a power cut loses at most ``outbox_sync_s`` worth of messages. Rows are the
finished payload bytes (the original run_id and seq inside), in delivery order (the row id); the next start
delivers them first.

Only the publisher's sender thread touches a store (and ``start``/``stop``/``hand_over`` while that thread is
not running), so a store is not thread-safe on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("edgedet.mqtt")

SCHEMA = ("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,"
          " qos INTEGER NOT NULL, retain INTEGER NOT NULL)")
SUFFIXES = ("", "-wal", "-shm")  # the database and the files of its write-ahead log


class StoredMessage(NamedTuple):
    row: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class OutboxStore:
    """One outbox file. ``open`` never raises for a bad file: it sets the file aside and starts empty."""

    def __init__(self, path: Path, db: sqlite3.Connection, max_bytes: int) -> None:
        self.path = path
        self._db = db
        self.max_bytes = max_bytes
        self._sizes: deque[tuple[int, int]] = deque()  # (row, payload size) of every stored row, in order
        self.total_bytes = 0
        self._failing = False

    @classmethod
    def open(cls, path: Path, max_bytes: int) -> OutboxStore | None:
        """The store at ``path`` (created when missing); None when the file cannot be used at all (logged)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("MQTT outbox: cannot create the folder of mqtt.outbox_path %s (%s); the outbox is kept "
                      "in memory only", path, exc.strerror or exc)
            return None
        try:
            return cls._connect(path, max_bytes)
        except sqlite3.Error as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                for suffix in SUFFIXES:
                    if os.path.exists(f"{path}{suffix}"):
                        os.replace(f"{path}{suffix}", f"{aside}{suffix}")
                store = cls._connect(path, max_bytes)
            except (OSError, sqlite3.Error) as again:
                log.error("MQTT outbox: cannot use mqtt.outbox_path %s (%s; %s); the outbox is kept in memory "
                          "only: check the file and its folder are writable by the service user", path, exc,
                          again)
                return None
            log.error("MQTT outbox: %s is unreadable (%s); set it aside as %s and starting with an empty "
                      "outbox", path, exc, aside.name)
            return store

    @classmethod
    def _connect(cls, path: Path, max_bytes: int) -> OutboxStore:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit is on the medium before it returns (commits happen at most every sync_s).
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            # Reads every page of the table: a damaged file is found now, not halfway through a drain.
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
        except BaseException:
            db.close()
            raise
        return cls(path, db, max_bytes)

    def load(self) -> list[StoredMessage]:
        """Everything the last run left, in order."""
        try:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            log.error("MQTT outbox: cannot read %s (%s); its messages are not delivered", self.path, exc)
            return []
        out = [StoredMessage(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4])) for r in rows]
        self._sizes = deque((m.row, len(m.payload)) for m in out)
        self.total_bytes = sum(size for _, size in self._sizes)
        return out

    @property
    def empty(self) -> bool:
        return not self._sizes

    @property
    def first_row(self) -> int | None:
        return self._sizes[0][0] if self._sizes else None

    def sync(self, new: list[tuple[str, bytes, int, bool]], keep_from: int | None) -> list[int] | None:
        """In one transaction: delete the rows before ``keep_from`` (None: every row stored so far), append
        ``new``; return the new rows' ids (None when the write failed: logged once, retried next time)."""
        first = self.first_row
        delete = first is not None and (keep_from is None or keep_from > first)
        if not new and not delete:
            return []  # nothing changed: no write
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if delete:
                    if keep_from is None:
                        self._db.execute("DELETE FROM outbox")
                    else:
                        self._db.execute("DELETE FROM outbox WHERE id < ?", (keep_from,))
                rows = []
                for topic, payload, qos, retain in new:
                    cursor = self._db.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                                              (topic, payload, qos, int(retain)))
                    rows.append(int(cursor.lastrowid or 0))
        except sqlite3.Error as exc:
            if not self._failing:
                log.error("MQTT outbox: cannot write %s (%s); undelivered messages are kept in memory only "
                          "until it works again", self.path, exc)
                self._failing = True
            return None
        if self._failing:
            log.info("MQTT outbox: writing %s works again", self.path)
            self._failing = False
        if delete:
            while self._sizes and (keep_from is None or self._sizes[0][0] < keep_from):
                self.total_bytes -= self._sizes.popleft()[1]
        for row, (_, payload, _, _) in zip(rows, new):
            self._sizes.append((row, len(payload)))
            self.total_bytes += len(payload)
        return rows

    def rows_over_cap(self) -> int | None:
        """The first row to keep so that the stored bytes fit ``max_bytes`` (None: they fit)."""
        if self.total_bytes <= self.max_bytes:
            return None
        excess = self.total_bytes - self.max_bytes
        for row, size in self._sizes:
            if excess <= 0:
                return row
            excess -= size
        return (self._sizes[-1][0] + 1) if self._sizes else None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
