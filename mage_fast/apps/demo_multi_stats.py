"""demo-multi's statistics: mean ± std over seeds and a paired bootstrap of the sam − ian difference.

Per-item scores under SAM's caption rule (``mage_fast.apps.caption_score``): ROUGE-L is already a mean of
per-item F; CIDEr-D is the mean of pycocoevalcap's per-item CIDEr-D with the idf of the whole
scored set (a resample keeps that idf: the references are the same for both aligners); BLEU-4 is a
corpus score, so each item keeps its n-gram counts (pycocoevalcap's, "closest" reference length)
and every resample recomputes the corpus BLEU-4 from the summed counts.

The bootstrap is paired and two-level: a resample draws seeds with replacement and held-out sets
with replacement, the same sets for both aligners and every drawn seed; its statistic is the mean
over the drawn seeds of metric(sam) − metric(ian) on the drawn sets. The interval is the 2.5 and
97.5 percentiles of that statistic.
"""

from __future__ import annotations

import re
import statistics

import numpy as np

from mage_fast.apps.caption_score import METRICS, _normalized, _rouge_l_sam

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's guards in BLEU
_OBJECT = re.compile(r"\b(red|green|blue|yellow) (circle|square|triangle)\b")


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    if not xs:
        raise ValueError("mean_std of no values")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def bleu_stats(hyp: str, refs: list[str]) -> np.ndarray:
    """(10,) pycocoevalcap's BLEU counts of one item: testlen, closest reflen, guess[4], correct[4]."""
    from pycocoevalcap.bleu.bleu_scorer import precook

    testlen, counts = precook(hyp, 4)
    reflens, maxref = [], {}
    for r in refs:
        rl, rc = precook(r, 4)
        reflens.append(rl)
        for g, c in rc.items():
            maxref[g] = max(maxref.get(g, 0), c)
    reflen = min((abs(rl - testlen), rl) for rl in reflens)[1]
    correct = [0] * 4
    for g, c in counts.items():
        correct[len(g) - 1] += min(maxref.get(g, 0), c)
    return np.array([testlen, reflen, *[max(0, testlen - k) for k in range(4)], *correct], dtype=np.float64)


def corpus_bleu4(stats: np.ndarray) -> np.ndarray:
    """BLEU-4 (x100) from summed counts: stats (..., n_items, 10) → (...)."""
    s = stats.sum(axis=-2)
    logp = np.log((s[..., 6:10] + _TINY) / (s[..., 2:6] + _SMALL)).sum(axis=-1) / 4
    ratio = (s[..., 0] + _TINY) / (s[..., 1] + _SMALL)
    bp = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return 100 * np.exp(logp) * bp


def item_scores(preds: dict[str, str], refs: dict[str, list[str]], ids: list[str]) -> dict[str, np.ndarray]:
    """Per item of ``ids`` (scored together): ROUGE-L (n,), CIDEr-D (n,) and BLEU counts (n, 10)."""
    from pycocoevalcap.cider.cider import Cider

    res, gts = _normalized({k: preds[k] for k in ids}, {k: refs[k] for k in ids}, "sam")
    _, cider = Cider().compute_score({k: gts[k] for k in ids}, {k: res[k] for k in ids})
    rouge = [100 * _rouge_l_sam({k: res[k]}, {k: gts[k]}) for k in ids]
    bleu = np.stack([bleu_stats(res[k][0], gts[k]) for k in ids])
    return {"BLEU-4": bleu, "ROUGE-L": np.asarray(rouge), "CIDEr-D": 100 * np.asarray(cider)}


def metric_of(items: dict[str, np.ndarray], metric: str, idx: np.ndarray | None = None) -> np.ndarray:
    """The corpus metric over the items idx (..., k) (all items when None)."""
    x = items[metric] if idx is None else items[metric][idx]
    return corpus_bleu4(x) if metric == "BLEU-4" else x.mean(axis=-1)


def paired_bootstrap(
    ian: list[dict[str, np.ndarray]], sam: list[dict[str, np.ndarray]], n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{metric: {diff, lo, hi, p_le_0}}: sam − ian, mean over seeds (ian[s] and sam[s] share seed
    s and the same items), with the 95 % paired two-level bootstrap interval (module docstring)
    and the share of resamples where the difference is <= 0."""
    if len(ian) != len(sam) or not ian:
        raise ValueError(f"paired bootstrap needs the same seeds for both: {len(ian)} vs {len(sam)} runs")
    rng = np.random.default_rng(seed)
    n_items = len(ian[0]["ROUGE-L"])
    seeds = rng.integers(0, len(ian), size=(n_boot, len(ian)))
    items = rng.integers(0, n_items, size=(n_boot, n_items))
    out = {}
    for m in METRICS:
        # per seed: (n_boot,) corpus metric of each aligner on the resampled items
        d = np.stack([metric_of(s, m, items) - metric_of(i, m, items) for i, s in zip(ian, sam)])
        boot = np.take_along_axis(d.T, seeds, axis=1).mean(axis=1)
        full = statistics.mean(float(metric_of(s, m) - metric_of(i, m)) for i, s in zip(ian, sam))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[m] = {"diff": full, "lo": float(lo), "hi": float(hi), "p_le_0": float((boot <= 0).mean())}
    return out


def object_hits(preds: dict[str, str], refs: dict[str, list[str]], tasks: dict[str, str]) -> dict[str, dict]:
    """Per task (and "all"): the share of answers whose first "colour shape" is the reference's
    (the linked object: the shared one, the changed one, the story's) and the number of distinct
    answers. A model that ignores the images answers one prior sentence: distinct answers ~1."""
    out: dict[str, dict] = {}
    for t in [*dict.fromkeys(tasks[k] for k in refs), "all"]:
        ids = [k for k in refs if t in ("all", tasks[k])]
        first = [(_OBJECT.search(preds.get(k, "")), _OBJECT.search(refs[k][0])) for k in ids]
        hits = [p is not None and r is not None and p.group(0) == r.group(0) for p, r in first]
        out[t] = {"object": sum(hits) / len(ids), "distinct": len({preds.get(k, "") for k in ids}), "n": len(ids)}
    return out
