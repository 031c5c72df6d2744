"""python -m mage_fast.apps.mllm_bench {mme,mmbench,seed} --data PATH (--model DIR | --answers FILE)

With --model, the questions not yet in the answers file (--out, or --answers) are answered and
appended; then the file is scored against --data. The scores print as a table and are written as
JSON beside the answers (<answers>_scores.json), with ``made_with``: how they were made.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from mage_fast.apps.mllm_bench import mmbench, mme, record, runner, seed
from mage_fast.apps.mllm_bench.common import read_answers, row_key
from mage_fast.apps.mllm_bench.runner import ASPECT_RULES


def _questions(a: argparse.Namespace) -> tuple[list, Callable, Callable, Callable]:
    """(questions, score(answers) -> dict, report(dict) -> str, the answers rows' key) of the
    chosen benchmark."""
    if a.bench == "mme":
        qs = mme.load(a.data)
        return qs, lambda ans: mme.score(qs, ans), mme.report, mme.answer_key
    if a.bench == "mmbench":
        qs = mmbench.load(a.data, rotate=not a.no_rotate)
        return qs, lambda ans: mmbench.score(qs, ans), mmbench.report, row_key
    qs, names = seed.load(a.data, a.image_root)
    return qs, lambda ans: seed.score(qs, ans, names), seed.report, row_key


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mage_fast.apps.mllm_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=("mme", "mmbench", "seed"))
    p.add_argument("--data", required=True, help="MME folder, MMBench TSV, or SEED-Bench JSON")
    p.add_argument("--model", default=None, help="an exported model folder; without it, only score --answers")
    p.add_argument("--answers", default=None, help="answers JSONL to score (and, with --model, to resume)")
    p.add_argument("--out", default=None, help="answers JSONL to write (default: runs/bench/<bench>_<model>.jsonl)")
    p.add_argument("--image-root", default=None, help="SEED-Bench image folder (default: beside the JSON)")
    p.add_argument(
        "--mode",
        choices=("generate", "likelihood"),
        default="generate",
        help="seed: answer by generation or by ranking the options' likelihoods",
    )
    p.add_argument("--no-rotate", action="store_true", help="mmbench: no CircularEval rotations of a plain TSV")
    p.add_argument(
        "--aspect",
        choices=sorted(ASPECT_RULES),
        default="resize",
        help="resize: stretch each image to the model's square size (as the project trains); "
        "pad: pad to a square with the mean colour first (LLaVA-1.5's image_aspect_ratio: pad)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    a = p.parse_args(argv)
    if a.model is None and a.answers is None:
        p.error("give --model (answer, then score) or --answers (score an existing file)")
    if a.mode == "likelihood" and a.bench != "seed":
        p.error("--mode likelihood is SEED-Bench's; MME and MMBench are scored on generated answers")
    return a


def _decoding(a: argparse.Namespace, answered: int) -> dict:
    """The decoding settings of this run; ``answered``: the questions it answered (a resumed file
    keeps the rows an earlier run wrote)."""
    if a.mode == "likelihood":
        how = {"mode": "likelihood", "padding": "right, under an attention mask"}
    else:
        how = {"mode": "greedy", "max_new_tokens": a.max_new_tokens, "padding": "none: batches of one prompt length"}
    return {**how, "batch_size": a.batch_size, "answered_in_this_run": answered}


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    questions, score, report, key = _questions(a)
    path, model = a.out or a.answers, None
    if a.model is not None:
        name = os.path.basename(os.path.normpath(a.model))
        path = path or os.path.join("runs", "bench", f"{a.bench}_{name}.jsonl")
        bench = runner.load(a.model, aspect=a.aspect)
        fn = runner.rank_choices if a.mode == "likelihood" else runner.max_new_tokens(a.max_new_tokens)
        answered = runner.run(bench, questions, path, fn, a.batch_size, key)
        model = record.model_record(bench, a.model, questions[0], _decoding(a, answered))
    result = score(read_answers(path, key))
    result["made_with"] = record.made_with(a.bench, a.data, path, a.mode, model)
    print(report(result))
    out = os.path.splitext(path)[0] + "_scores.json"
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    return result


if __name__ == "__main__":
    main()
