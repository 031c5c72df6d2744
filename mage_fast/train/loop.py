"""The training run: config → data → model under ZeRO-3 → steps → checkpoints → export.

`train()` is the outline. Building the run lives in `mage_fast.train.run`, its position and RNG
states in `progress`, its logs in `logs`, its end (summary, final eval, export) in `finish`; the
step itself (forward, loss, backward, non-finite skip) in `mage_fast.train.step`, which
benchmarks/bench_step.py times.
"""

from __future__ import annotations

import json
import os

import torch
from torch.utils.data import DataLoader

from mage_fast.train import checkpoint, finish
from mage_fast.train.accuracy import converged
from mage_fast.train.answering import write_answers
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import barrier, quiet_warnings
from mage_fast.train.engine import param_shapes, step_probe
from mage_fast.train.logs import Logs, record
from mage_fast.train.preempt import StopRequest, pause_for_signal
from mage_fast.train.progress import Progress
from mage_fast.train.run import Run, build_run, resume
from mage_fast.train.step import train_step


class NonFiniteError(RuntimeError):
    """`max_bad_steps` steps in a row had a non-finite loss or gradient norm."""


def _check_bad_run(run: Run, prog: Progress, rec: dict) -> None:
    """Abort after `max_bad_steps` skipped steps in a row (once the last one is logged)."""
    bad = prog.bad_run
    if bad and len(bad) >= run.cfg.max_bad_steps:
        raise NonFiniteError(
            f"aborting: {len(bad)} non-finite steps in a row (steps {bad[0]}-{bad[-1]}, "
            f"max_bad_steps={run.cfg.max_bad_steps}); last sample ids {rec['ids']}. Lower optim.lr, check the "
            f"data of those ids, or resume from the last checkpoint"
        )


def _accuracy(run: Run, step: int, logs: Logs) -> dict:
    """Held-out exact match per qtype on data.answers (both ranks generate); appended to accuracy.jsonl.
    "converged": every type reached early_stop_accuracy (always false with it off)."""
    acc, answered = run.acc_eval.run(run.engine.module, run.rank, run.world)
    point = {"step": step, "accuracy": acc, "converged": converged(acc, run.cfg.early_stop_accuracy)}
    if run.rank == 0:
        write_answers(answered, os.path.join(run.cfg.run_dir, "answers_eval.jsonl"), f"step{step}")
        with open(os.path.join(run.cfg.run_dir, "accuracy.jsonl"), "a") as f:
            f.write(json.dumps(point) + "\n")
        logs.accuracy(step, acc, point["converged"])
    return point


def _save(run: Run, prog: Progress) -> None:
    meta = {"step": prog.step, "world_size": run.world, "shapes": param_shapes(run.engine.module)}
    client = prog.client_state(run.batches, run.world)
    cfg = run.cfg
    checkpoint.save(
        run.engine, cfg.run_dir, prog.step, client, cfg.keep_last, run.storage, meta, cfg.faults.kill_in_save
    )


def _due(every: int, step: int, last: int, delay: int = 0) -> bool:
    """Whether a periodic action (every `every` steps from step `delay` on) or the last step is now."""
    return (every > 0 and step % every == 0 and step >= delay) or step == last


def _loader(run: Run, prog: Progress) -> DataLoader:
    """This rank's micro-batches from where the run stands."""
    return DataLoader(
        run.data,
        batch_sampler=run.batches.iter_from(prog.consumed),
        collate_fn=run.collate,
        num_workers=run.cfg.data.num_workers,
        # Its own generator: iter() draws the workers' base seed from it, not from the global RNG,
        # which a resumed run restores just before and dropout (LoRA's) then draws from.
        generator=torch.Generator().manual_seed(run.cfg.seed),
    )


def _loop(run: Run, prog: Progress, stop: StopRequest) -> tuple[list[dict], list[dict], bool]:
    """Steps until max_steps, a held-out check at early_stop_accuracy (checkpointed, then the
    final eval and export as at max_steps) or a stop signal -> (history, accuracy points, stopped
    by a signal)."""
    cfg = run.cfg
    logs, faults = Logs(run, prog), cfg.faults
    inject = faults.step_faults(run.rank, run.world)
    it, history, accuracy = iter(_loader(run, prog)), [], []
    try:
        while prog.step < cfg.max_steps:
            micro = [next(it) for _ in range(cfg.grad_accum)]
            prog.consumed += cfg.grad_accum
            fault = inject.get(prog.step + 1)
            res = train_step(run.engine, micro, run.rank, run.world, fault=fault, stop=stop.requested)
            prog.step += 1
            history.append(record(run, prog, res, micro))
            if faults.probe:
                history[-1].update(step_probe(run.engine))
            logs.step(history[-1], res, prog, run.engine)
            _check_bad_run(run, prog, history[-1])
            done = False
            if run.acc_eval is not None and _due(cfg.eval_every, prog.step, cfg.max_steps, cfg.eval_delay):
                accuracy.append(_accuracy(run, prog.step, logs))
                done = accuracy[-1]["converged"]
            if _due(cfg.save_every, prog.step, cfg.max_steps) or res.stop or done:
                _save(run, prog)
            pause_for_signal(prog.step, stop, faults.pause_after, faults.pause_s)
            if res.stop and prog.step < cfg.max_steps:
                return history, accuracy, True
            if done:
                break
    finally:
        logs.close()
    return history, accuracy, False


def train(cfg: TrainConfig) -> dict:
    """The whole run; returns its summary (also run_dir/summary.json). After a stop signal the
    summary's `preempted` names it and there is no final eval or export (the entry point exits
    with EXIT_PREEMPTED)."""
    quiet_warnings()
    stop = StopRequest(cfg.stop_signals)
    try:
        run = build_run(cfg)
        prog = resume(run)
        history, accuracy, stopped = _loop(run, prog, stop)
        summary = finish.summarize(run, prog, history, accuracy)
        if stopped:
            finish.stopped(run, prog, stop)
            summary["preempted"] = stop.signal or "another rank"
        else:
            finish.eval_and_export(run, summary)
        if run.rank == 0:
            with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f)
        barrier()
        return summary
    finally:
        stop.restore()
