"""The end of a run: its summary, the final held-out loss, the export, the stop message."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from mage_fast.data.llava import LlavaDataset
from mage_fast.export import pretrained
from mage_fast.train import checkpoint, lora_export, startup
from mage_fast.train.dist import all_reduce_sum, barrier
from mage_fast.train.engine import export_state, optimizer_state_bytes, param_counts, zero_stage
from mage_fast.train.preempt import EXIT_PREEMPTED, StopRequest
from mage_fast.train.progress import Progress
from mage_fast.train.run import Run
from mage_fast.train.step import to_device


@torch.no_grad()
def eval_loss(engine, loader) -> float:
    """Token-weighted CE over a loader (every rank runs every batch: ZeRO-3 gathers per module)."""
    engine.eval()
    total, count = 0.0, 0
    for batch in loader:
        out = engine(**to_device(batch, engine.device))
        n = int(out["n_tokens"])
        total += float(out["ce"]) * n
        count += n
    engine.train()
    total, count = all_reduce_sum(total), all_reduce_sum(count)
    return total / max(count, 1.0)


def summarize(run: Run, prog: Progress, history: list[dict], accuracy: list[dict]) -> dict:
    """The run's summary (summary.json); prints the data skipped at startup and in the loader."""
    st = run.data.stats
    skipped = {r: {"count": st.counts[r], "ids": st.ids[r]} for r in st.counts if st.counts[r]}
    if run.rank == 0:
        print(f"done: {prog.step} steps, {prog.nonfinite} non-finite skipped; data {st.summary()}", flush=True)
        for r, v in skipped.items():
            print(f"skipped {r}: {v['count']}, ids {v['ids']}", flush=True)
    barrier()  # every rank's late decode failures are in its log
    late = startup.late_failures(run.cfg.run_dir)
    for r, v in late.items() if run.rank == 0 else ():
        print(
            f"failed to decode in the loader ({r}): {len(v['ids'])}, ids {v['ids']}, replaced by {v['replaced_by']}",
            flush=True,
        )
    return {
        "step": prog.step,
        "world_size": run.world,
        "zero_stage": zero_stage(run.ds),
        "history": history,
        "accuracy": accuracy,
        "converged_at": next((p["step"] for p in accuracy if p["converged"]), None),
        "data": st.summary(),
        "data_skipped": skipped,
        "nonfinite_steps": prog.nonfinite,
        "preempted": None,
        "data_late": late,
        "params": param_counts(run.engine.module),
        "optimizer_state_bytes": optimizer_state_bytes(run.engine),
    }


def stopped(run: Run, prog: Progress, stop: StopRequest) -> None:
    """Rank 0 says which signal stopped the run and how to resume it."""
    if run.rank == 0:
        got = stop.signal or "a signal on another rank"
        print(
            f"stopping on {got}: checkpoint {checkpoint.tag_of(prog.step)} committed; exit {EXIT_PREEMPTED} "
            f"(run the same command to resume)",
            flush=True,
        )


def _final_eval_loss(run: Run) -> float:
    """CE over data.eval, each rank taking every world-th row (a remainder of rows is left out)."""
    cfg, rank, world = run.cfg, run.rank, run.world
    ev = LlavaDataset.from_config(
        cfg.data,
        run.tokenizer,
        transform=run.transform,
        num_image_tokens=run.engine.module.num_image_tokens,
        split="eval",
        image_check=startup.dataset_hooks(cfg.run_dir, rank, world, cfg.data.num_workers)["image_check"],
    )
    idx = list(range(rank, len(ev) - len(ev) % world, world))
    loader = DataLoader(torch.utils.data.Subset(ev, idx), batch_size=cfg.micro_batch_size, collate_fn=run.collate)
    return eval_loss(run.engine, loader)


def eval_and_export(run: Run, summary: dict) -> None:
    """The final held-out loss (data.eval) into `summary`, then the export (and LoRA's adapters)."""
    cfg, rank = run.cfg, run.rank
    if cfg.data.eval:
        summary["eval_loss"] = _final_eval_loss(run)
        if rank == 0:
            print(f"eval loss {summary['eval_loss']:.6f}", flush=True)
    if cfg.export:
        state = export_state(run.engine.module)
        if rank == 0:
            out = os.path.join(cfg.run_dir, "export")
            pretrained.write_export(out, run.engine.module, run.tokenizer, state, run.transform)
            print(f"exported to {out}", flush=True)
    if cfg.export and cfg.lora.enable:  # the adapters alone besides the merged export
        out = os.path.join(cfg.run_dir, lora_export.ADAPTER_EXPORT)
        if lora_export.write_adapter_export(out, run.engine.module, run.tokenizer, rank) and rank == 0:
            print(f"adapter exported to {out}", flush=True)
