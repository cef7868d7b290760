"""The judgments database: one SQLite file (stdlib sqlite3).

    pairs    every pair the server issued: pair_id (random, server-side), kind ("models" | "real"),
             rater (as typed, or "anonymous"), issued_at, left_item / right_item (which item was
             shown on the left), left_face / right_face (JSON: model version + seed + psi, or
             dataset/output + row), left_png / right_png (the exact bytes the rater saw)
    choices  at most one per pair: pair_id (a foreign key into pairs: a choice for a pair that was
             never issued cannot be stored), chosen_at, choice ("left" | "right"), winner, loser

A choice takes its rater from the pair it answers, so a judgment is always attributed to whoever
the pair was issued to. Times are UTC ISO 8601. Each call opens its own connection (the web
server answers from several threads); WAL mode lets readers see a consistent file while it grows.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = "1"
KINDS = ("models", "real")
SIDES = ("left", "right")
PAIR_ID = re.compile(r"p-[0-9a-f]{16}")
REAL_ITEM = "real"  # the item name of every real face

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id    TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('models', 'real')),
    rater      TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    left_item  TEXT NOT NULL,
    right_item TEXT NOT NULL,
    left_face  TEXT NOT NULL,
    right_face TEXT NOT NULL,
    left_png   BLOB NOT NULL,
    right_png  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS choices (
    pair_id   TEXT PRIMARY KEY REFERENCES pairs (pair_id),
    chosen_at TEXT NOT NULL,
    choice    TEXT NOT NULL CHECK (choice IN ('left', 'right')),
    winner    TEXT NOT NULL,
    loser     TEXT NOT NULL
);
CREATE VIEW IF NOT EXISTS judgments AS
    SELECT p.pair_id, p.kind, p.rater, p.issued_at, c.chosen_at, p.left_item, p.right_item,
           c.choice, c.winner, c.loser
    FROM choices c JOIN pairs p ON p.pair_id = c.pair_id;
"""


class UnknownPair(LookupError):
    """A choice for a pair id this database never issued."""


class AlreadyAnswered(ValueError):
    """A second choice for the same pair."""


@dataclass(frozen=True)
class Judgment:
    pair_id: str
    kind: str
    rater: str
    issued_at: str
    chosen_at: str
    left_item: str
    right_item: str
    choice: str
    winner: str
    loser: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class JudgmentStore:
    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no judgments database at {self.path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        not_ours = ValueError(f"{self.path} is not a ganray human-evaluation database (schema {SCHEMA_VERSION})")
        try:
            with closing(self._connect()) as db, db:
                if create and db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:  # a new file
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA)
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() \
                    if self._has_table(db, "meta") else None
        except sqlite3.DatabaseError:  # not an SQLite file at all
            raise not_ours from None
        if row is None or row[0] != SCHEMA_VERSION:
            raise not_ours

    @staticmethod
    def _has_table(db: sqlite3.Connection, name: str) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def issue(self, kind: str, rater: str, left: tuple[str, dict, bytes], right: tuple[str, dict, bytes]) -> str:
        """Record a pair about to be shown; returns its new id. left/right: (item, face reference, PNG)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        pair_id = f"p-{secrets.token_hex(8)}"
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (pair_id, kind, rater, _now(), left[0], right[0], json.dumps(left[1]), json.dumps(right[1]),
                        left[2], right[2]))
        return pair_id

    def image(self, pair_id: str, side: str) -> bytes:
        if side not in SIDES:
            raise ValueError(f"side must be left or right, got {side!r}")
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {side}_png FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise UnknownPair(pair_id)
        return row[0]

    def choose(self, pair_id: str, choice: str) -> Judgment:
        """Store the choice for an issued pair. UnknownPair / AlreadyAnswered otherwise (nothing stored)."""
        if choice not in SIDES:
            raise ValueError(f"choice must be left or right, got {choice!r}")
        with closing(self._connect()) as db, db:
            pair = db.execute("SELECT left_item, right_item FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
            if pair is None:
                raise UnknownPair(pair_id)
            winner, loser = pair if choice == "left" else pair[::-1]
            try:
                db.execute("INSERT INTO choices VALUES (?, ?, ?, ?, ?)", (pair_id, _now(), choice, winner, loser))
            except sqlite3.IntegrityError:
                raise AlreadyAnswered(pair_id) from None
            row = db.execute("SELECT * FROM judgments WHERE pair_id = ?", (pair_id,)).fetchone()
        return Judgment(*row)

    def judgments(self) -> list[Judgment]:
        with closing(self._connect()) as db:
            return [Judgment(*row) for row in db.execute("SELECT * FROM judgments ORDER BY chosen_at, pair_id")]

    def counts(self) -> dict[str, int]:
        with closing(self._connect()) as db:
            issued = db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            answered = db.execute("SELECT COUNT(*) FROM choices").fetchone()[0]
        return {"pairs_issued": issued, "judgments": answered, "unanswered": issued - answered}
