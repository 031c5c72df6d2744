"""A run's step records and rank 0's sinks: history.jsonl, TensorBoard, the progress bar."""

from __future__ import annotations

import json
import os
import time

from mage_fast.train.dist import all_gather_objects
from mage_fast.train.engine import optimizer_updates
from mage_fast.train.progress import Progress
from mage_fast.train.run import Run
from mage_fast.train.step import StepResult


class Logs:
    """Rank 0's sinks: history.jsonl (every step), TensorBoard and the progress bar (every
    `log_every` steps). Other ranks hold an inert instance."""

    def __init__(self, run: Run, prog: Progress) -> None:
        self.cfg, self.on = run.cfg, run.rank == 0
        self.t_last, self.tok_since = time.time(), 0.0
        if not self.on:
            return
        from torch.utils.tensorboard import SummaryWriter  # tensorboard loads on rank 0 only
        from tqdm import tqdm

        d = run.cfg.run_dir
        self.writer = SummaryWriter(os.path.join(d, "tb"))
        self.bar = tqdm(total=run.cfg.max_steps, initial=prog.step, desc="train", dynamic_ncols=True, mininterval=2.0)
        self.hist = open(os.path.join(d, "history.jsonl"), "a", buffering=1)  # noqa: SIM115
        self.hist.write(json.dumps({"start": prog.step, "resumed_from": prog.resumed_from, "world_size": run.world}))
        self.hist.write("\n")

    def step(self, rec: dict, res: StepResult, prog: Progress, engine) -> None:
        self.tok_since += 0.0 if res.nonfinite else res.tokens
        if not self.on:
            return
        self.hist.write(json.dumps(rec) + "\n")
        self.bar.update(1)
        if rec["step"] % self.cfg.log_every and rec["step"] != self.cfg.max_steps:
            return
        tps = self.tok_since / max(time.time() - self.t_last, 1e-9)
        self.bar.set_postfix(loss=f"{res.loss:.4f}", ce=f"{res.ce:.4f}", mse=f"{res.mse:.4f}", tok_s=f"{tps:.0f}")
        for k, v in (("loss", res.loss), ("ce", res.ce), ("mse", res.mse), ("tokens_per_s", tps)):
            self.writer.add_scalar(f"train/{k}", v, rec["step"])
        self.writer.add_scalar("train/grad_norm", res.grad_norm, rec["step"])
        self.writer.add_scalar("train/nonfinite_steps", prog.nonfinite, rec["step"])
        for g in engine.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], rec["step"])
        self.t_last, self.tok_since = time.time(), 0.0

    def accuracy(self, step: int, acc: dict[str, float], done: bool) -> None:
        for k, v in acc.items():
            self.writer.add_scalar(f"eval/accuracy_{k}", v, step)
        line = f"step {step} held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        bar = self.cfg.early_stop_accuracy
        if bar:
            verdict = "converged, stopping early" if done else "not yet"
            line += f"; every type >= {bar} (early_stop_accuracy): {verdict}"
        self.bar.write(line)

    def close(self) -> None:
        if self.on:
            self.bar.close()
            self.hist.close()
            self.writer.close()


def record(run: Run, prog: Progress, res: StepResult, micro: list[dict]) -> dict:
    """The step's history record; on a skipped step also the sample ids of every rank, and the
    non-finite counters move."""
    rec = {
        "step": prog.step,
        "loss": res.loss,
        "ce": res.ce,
        "mse": res.mse,
        "grad_norm": res.grad_norm,
        "wall": time.time(),
        "images_per_rank": res.images_per_rank,
    }
    if not res.nonfinite:
        prog.bad_run = []
        rec["updates"] = optimizer_updates(run.engine)
        return rec
    ids = [i for ids in all_gather_objects([i for b in micro for i in b["ids"]], run.world) for i in ids]
    prog.nonfinite += 1
    prog.bad_run.append(prog.step)
    rec.update(skipped=True, nonfinite=res.nonfinite, ids=ids, updates=optimizer_updates(run.engine))
    if run.rank == 0:
        print(
            f"non-finite {res.nonfinite} at step {prog.step} (loss {res.loss}, grad norm {res.grad_norm}): step "
            f"skipped on all ranks, no update ({len(prog.bad_run)} in a row, {prog.nonfinite} in all); "
            f"sample ids {ids}",
            flush=True,
        )
    return rec
