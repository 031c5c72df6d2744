"""Check tool rows before training.

    python -m mage_fast.apps.tools.validate FILE [FILE ...]

Reads LLaVA JSON / JSONL files and prints one line per bad row, ``FILE: ID: REASON: DETAIL``,
then a count per reason; exit status 1 when any row is bad. Reasons (the same names training
skips and counts): ``tool_arguments`` (a call's arguments are not a JSON object, or the call does
not parse), ``unknown_tool``, ``tool_schema`` (arguments against the tool's JSON schema),
``role_order``, ``orphan_observation`` (an observation with no call before it),
``placeholder_mismatch`` (``<image>`` count vs images), ``malformed``. Rows without tools or
tool turns get the order and placeholder checks too.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from mage_fast.data.llava import BadLine, DataError, read_rows
from mage_fast.toolcall.format import RowError, check_row


def validate_rows(rows: list[Any]) -> list[tuple[str, str, str]]:
    """Rows → ``(id, reason, detail)`` for each bad one."""
    bad = []
    for i, row in enumerate(rows):
        if isinstance(row, BadLine):
            bad.append((row.id, "malformed", row.error))
            continue
        sid = str(row["id"]) if isinstance(row, dict) and row.get("id") is not None else f"row {i}"
        try:
            check_row(row)
        except RowError as e:
            bad.append((sid, e.reason, e.detail))
    return bad


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="mage_fast.apps.tools.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    reasons: Counter[str] = Counter()
    total = 0
    for path in a.files:
        try:
            rows = read_rows(path)
        except (OSError, DataError) as e:
            print(f"{path}: cannot read: {e}")
            reasons["unreadable"] += 1
            continue
        total += len(rows)
        for sid, reason, detail in validate_rows(rows):
            print(f"{path}: {sid}: {reason}: {detail}")
            reasons[reason] += 1
    n_bad = sum(reasons.values())
    summary = " ".join(f"{r}={n}" for r, n in sorted(reasons.items())) or "none"
    print(f"{total} rows, {n_bad} bad: {summary}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
