"""Chat conversations in SQLite (``chats.db`` in the state dir, owned by the CLI).

The supervisor's ``state.db`` belongs to the supervisor; conversations belong to the person
at the terminal, so the CLI keeps them in a database of its own.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from smackctl.paths import private_db

__all__ = ["Conversations"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, title TEXT NOT NULL,
    messages TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
"""


class Conversations:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        private_db(path)  # the conversations are the user's alone, whatever the umask
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def save(self, conv_id: int | None, model: str | None, messages: list[dict[str, Any]]) -> int:
        now = time.time()
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        title = " ".join(str(first).split())[:60] or "(empty)"
        if conv_id is None:
            cur = self.db.execute(
                "INSERT INTO conversations (model, title, messages, created, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                (model, title, json.dumps(messages), now, now),
            )
            return int(cur.lastrowid or 0)
        self.db.execute(
            "UPDATE conversations SET model=?, title=?, messages=?, updated=? WHERE id=?",
            (model, title, json.dumps(messages), now, conv_id),
        )
        return conv_id

    def load(self, conv_id: int | None) -> tuple[int, str | None, list[dict[str, Any]]] | None:
        """A conversation by id, or the most recent one when ``conv_id`` is None."""
        if conv_id is None:
            row = self.db.execute(
                "SELECT id, model, messages FROM conversations ORDER BY updated DESC LIMIT 1"
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT id, model, messages FROM conversations WHERE id=?", (conv_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, model, title, messages, updated FROM conversations "
            "ORDER BY updated DESC LIMIT ?",
            (limit,),
        )
        return [
            {"id": i, "model": m, "title": t, "messages": len(json.loads(msgs)), "updated": u}
            for i, m, t, msgs, u in rows
        ]
