"""What a benchmark scores JSON records about how it was made (``made_with``): the benchmark
file and its hash, the answers file and its hash, the answer-extraction rule, the project
version, and, when a model answered, its template, image rule and decoding settings."""

from __future__ import annotations

from typing import Any

from mage_fast.apps.mllm_bench.common import Question
from mage_fast.apps.mllm_bench.runner import ASPECT_RULES, Bench
from mage_fast.data.template import to_messages
from mage_fast.provenance import input_record, project_version

EXTRACTION = {
    "mme": "MME calculation.py: lower-cased; exactly yes/no, else 'yes' then 'no' within the first 4 "
    "characters, else 'other' (wrong)",
    "letter": "rules, no LLM judge: one option letter among the answer's words (MMBench's punctuation split) "
    "and among the last three; else 'answer is X'; else exactly one option text in the answer; else wrong",
    "likelihood": "the option whose answer tokens (text and end-of-turn) have the highest mean log-probability",
}


def extraction_rule(bench: str, mode: str) -> str:
    """The rule that turns an answer text into the scored label."""
    if bench == "mme":
        return EXTRACTION["mme"]
    return EXTRACTION["likelihood"] if mode == "likelihood" else EXTRACTION["letter"]


def model_record(bench: Bench, model_dir: str, q: Question, decoding: dict[str, Any]) -> dict[str, Any]:
    """The answering model's settings: folder, template (name and the first question rendered
    as the model saw it), image rule, decoding."""
    t = bench.transform
    rendered, _ = bench.template.render(to_messages([{"from": "human", "value": q.prompt}]), True)
    return {
        "path": model_dir,
        "template": {"name": getattr(bench.model.cfg, "template", "default"), "first_prompt": rendered},
        "image": {
            "aspect": bench.aspect,
            "rule": ASPECT_RULES[bench.aspect],
            "size": t.size,
            "mean": list(t.mean),
            "std": list(t.std),
        },
        "decoding": decoding,
    }


def made_with(name: str, data: str, answers: str, mode: str, model: dict[str, Any] | None) -> dict[str, Any]:
    """The ``made_with`` block of a scores JSON; ``model`` is None when a file was only scored."""
    return {
        "benchmark": name,
        "data": input_record(data),
        "answers": input_record(answers),
        "answer_extraction": extraction_rule(name, mode),
        "project": project_version(),
        "model": model,
    }
