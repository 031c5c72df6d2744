"""Tool-calling scores of a model on held-out tool rows, by running the executor.

    python -m mage_fast.apps.tools.score --model DIR --data eval.json [--out scores.json]

Each row's turns up to its first assistant turn are the prompt; the model plays the episode
(:mod:`.agent`) with the built-in tools (and ``--tool-module`` ones). Scores:

- ``valid_call``: model turns with a ``<tool_call>`` block whose every call parses and validates
  against its schema / all such turns.
- ``tool_name``: rows whose reference calls a tool: the first model turn calls the same names
  (as a multiset).
- ``argument_match``: those rows: the first turn's calls equal the reference's after BFCL-style
  normalisation (strings lower-cased and space-collapsed, numbers as floats, dict key order
  free, list order kept), order-free across parallel calls.
- ``argument_f1``: micro F1 over the calls' leaves (name, key path, normalised value).
- ``over_call``: rows whose reference calls no tool, where the model called one.
- ``end_to_end``: rows with a ``target`` image: the last image the executor produced equals it
  pixel for pixel.
- ``answer``: rows with a reference text answer after the calls (or none): exact match of the
  final answer after normalisation (``mage_fast.train.answering.normalize``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from mage_fast.apps.tools.agent import Episode, load_agent
from mage_fast.configtools import load_config
from mage_fast.data.llava import read_rows
from mage_fast.toolcall.config import ToolsConfig
from mage_fast.toolcall.format import CALL_ROLE, USER_ROLES, Call, count_placeholders, parse_calls, role_of
from mage_fast.train.answering import normalize as norm_text
from mage_fast.train.config import TrainConfig


def normalize(x: Any) -> Any:
    """BFCL-style value normalisation (see the module docstring)."""
    if isinstance(x, str):
        return " ".join(x.lower().split())
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, list):
        return [normalize(v) for v in x]
    if isinstance(x, dict):
        return {normalize(k): normalize(v) for k, v in x.items()}
    return x


def _key(c: Call) -> str:
    return json.dumps([c.name, normalize(c.arguments)], sort_keys=True)


def calls_match(pred: list[Call], ref: list[Call]) -> bool:
    """Same calls after normalisation, in any order (parallel calls are unordered)."""
    return Counter(map(_key, pred)) == Counter(map(_key, ref))


def _leaves(x: Any, path: str) -> Iterator[str]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}/{i}")
    else:
        yield f"{path}={json.dumps(x)}"


def leaves(calls: list[Call]) -> Counter[str]:
    """Each call's name and every normalised argument leaf, as strings."""
    out: Counter[str] = Counter()
    for c in calls:
        out[f"name={c.name}"] += 1
        out.update(_leaves(normalize(c.arguments), c.name))
    return out


def f1(tp: int, n_pred: int, n_ref: int) -> float:
    p, r = tp / n_pred if n_pred else 0.0, tp / n_ref if n_ref else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def same_pixels(a: Image.Image | None, b: Image.Image) -> bool:
    return (
        a is not None
        and a.size == b.size
        and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    )


def reference(row: dict[str, Any]) -> tuple[int, list[Call], str | None]:
    """(turns in the prompt, calls of the first assistant turn, final text answer or None)."""
    turns = row["conversations"]
    n = next(i for i, t in enumerate(turns) if i and role_of(turns[i - 1]) in USER_ROLES)
    calls = parse_calls(turns[n]["value"]) if role_of(turns[n]) == CALL_ROLE else []
    last = turns[-1]
    return n, calls, None if role_of(last) == CALL_ROLE else last["value"]


def _ratio(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def score_episodes(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records ``{"ref_calls", "ref_answer", "target" (PIL | None), "episode"}`` → the scores."""
    valid, name, args, over, e2e, ans = [], [], [], [], [], []
    tp = n_pred = n_ref = 0
    for r in records:
        ep, ref = r["episode"], r["ref_calls"]
        valid += [s.valid for s in ep.steps if s.calls or not s.valid]
        first = ep.steps[0] if ep.steps else None
        pred = first.calls if first else []
        called = bool(pred) or (first is not None and not first.valid)
        if ref:
            name.append(sorted(c.name for c in pred) == sorted(c.name for c in ref))
            args.append(calls_match(pred, ref))
            lp, lr = leaves(pred), leaves(ref)
            tp, n_pred, n_ref = tp + sum((lp & lr).values()), n_pred + sum(lp.values()), n_ref + sum(lr.values())
        else:
            over.append(called)
        if r["target"] is not None:
            e2e.append(same_pixels(ep.produced[-1] if ep.produced else None, r["target"]))
        if r["ref_answer"] is not None and (r["ref_calls"] or r["target"] is None):
            ans.append(ep.final is not None and norm_text(ep.final) == norm_text(r["ref_answer"]))
    return {
        "valid_call": _ratio(valid),
        "tool_name": _ratio(name),
        "argument_match": _ratio(args),
        "argument_f1": f1(tp, n_pred, n_ref) if n_ref else None,
        "over_call": _ratio(over),
        "end_to_end": _ratio(e2e),
        "answer": _ratio(ans),
        "n": {
            "rows": len(records),
            "call_turns": len(valid),
            "tool_rows": len(name),
            "no_tool_rows": len(over),
            "image_targets": len(e2e),
            "answers": len(ans),
        },
    }


def _load(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def prepare(rows: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """Rows → records with a fresh episode (the prompt turns and their images) each."""
    out = []
    for row in rows:
        n, calls, answer = reference(row)
        prompt = [dict(t) for t in row["conversations"][:n]]
        images = row.get("image", [])
        images = [images] if isinstance(images, str) else images
        k = count_placeholders(prompt)[0]
        target = _load(os.path.join(root, row["target"])) if row.get("target") else None
        ep = Episode(prompt, [_load(os.path.join(root, p)) for p in images[:k]])
        out.append(
            {
                "id": row.get("id"),
                "kind": row.get("kind", "all"),
                "ref_calls": calls,
                "ref_answer": answer,
                "target": target,
                "episode": ep,
            }
        )
    return out


def evaluate(
    model_dir: str,
    data: str,
    modules: list[str] = (),
    limit: int = 0,
    batch: int = 64,
    max_steps: int = 4,
    image_root: str | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Scores overall and per row ``kind`` of the first ``limit`` rows (0: all)."""
    t0 = time.time()
    agent = load_agent(model_dir, list(modules), timeout_s, max_steps=max_steps)
    rows = read_rows(data)
    rows = rows[:limit] if limit else rows
    recs = prepare(rows, image_root or os.path.dirname(os.path.abspath(data)))
    for i in range(0, len(recs), batch):
        agent.run([r["episode"] for r in recs[i : i + batch]])
    kinds = sorted({r["kind"] for r in recs})
    out = {"overall": score_episodes(recs)} | {k: score_episodes([r for r in recs if r["kind"] == k]) for k in kinds}
    out["seconds"] = round(time.time() - t0, 1)
    out["examples"] = [{"id": r["id"], "steps": [s.text for s in r["episode"].steps]} for r in recs[:6]]
    return out


def tools_config(path: str | None):
    """The ``tools`` section of a training YAML (defaults without one)."""
    if not path:
        return ToolsConfig()

    return load_config(TrainConfig, path).tools


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.apps.tools.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported model folder (run_dir/export)")
    p.add_argument("--data", required=True, help="held-out tool rows (JSON / JSONL)")
    p.add_argument("--tool-module", action="append", default=[], help="a module defining TOOLS; repeat")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="model turns per row (default: config's, 4)")
    p.add_argument("--config", default=None, help="a training YAML: its tools section (modules, timeout_s, max_steps)")
    p.add_argument("--image-root", default=None, help="image folder (default: the data file's folder)")
    p.add_argument("--out", default=None, help="write the scores as JSON here")
    a = p.parse_args(argv)
    tc = tools_config(a.config)
    s = evaluate(
        a.model,
        a.data,
        tc.modules + a.tool_module,
        a.limit,
        max_steps=a.max_steps or tc.max_steps,
        image_root=a.image_root,
        timeout_s=tc.timeout_s,
    )
    keys = ["valid_call", "tool_name", "argument_match", "argument_f1", "over_call", "end_to_end", "answer"]
    print(f"{'split':<14}" + "".join(f"{k:>15}" for k in keys) + f"{'rows':>6}")
    for split, m in s.items():
        if isinstance(m, dict) and "n" in m:
            cells = "".join(f"{'-' if m[k] is None else f'{m[k]:.3f}':>15}" for k in keys)
            print(f"{split:<14}{cells}{m['n']['rows']:>6}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(s, f, indent=1)
    print(json.dumps({k: s["overall"][k] for k in keys}))


if __name__ == "__main__":
    main()
