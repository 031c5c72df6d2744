"""DeepSpeed glue: the resolved ds config, the model built under ZeRO-3, optimizer and engine.

The model code knows nothing of DeepSpeed; here is where ZeRO-3's needs are met:
- HF parts see `HfDeepSpeedConfig`, so `from_pretrained` loads straight into partitions;
- our own modules are built inside `deepspeed.zero.Init`;
- `lm_head.weight`, read by the fused loss outside lm_head's forward, is registered as an
  external parameter of MageModel: gathered for its forward and backward;
- loading a part (stage 1 → stage 2) and exporting go through `GatheredParameters`.
"""

from __future__ import annotations

import json
import math
import time

import deepspeed
import torch
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from torch import nn

from mage_fast.configtools import ConfigError
from mage_fast.export import pretrained
from mage_fast.model import lora, qlora
from mage_fast.model.mllm import MageModel
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import all_reduce_vec

PARTS = ("vision_tower", "aligner", "llm")


def build_ds_config(cfg: TrainConfig, world: int) -> dict:
    """The DeepSpeed json with its "auto" fields filled from the TrainConfig (the one source)."""
    with open(cfg.deepspeed) as f:
        ds = json.load(f)
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for key, value in wanted.items():
        have = ds.get(key, "auto")
        if have != "auto" and have != value:
            raise ConfigError(f'{cfg.deepspeed}: {key}={have} disagrees with the train config ({value}); use "auto"')
        ds[key] = value
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled", "auto") not in ("auto", cfg.bf16):
        raise ConfigError(f"{cfg.deepspeed}: bf16.enabled={bf16['enabled']} disagrees with bf16={cfg.bf16}")
    bf16["enabled"] = cfg.bf16
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW as the client optimizer
    if zero_stage(ds) not in SUPPORTED_STAGES:
        # Stages 0/1 give a plain or BF16 optimizer without the overflow path that skipping a
        # non-finite step relies on; stage 2 keeps full weights per rank, as stage 0 does.
        raise ConfigError(
            f"{cfg.deepspeed}: zero_optimization.stage={zero_stage(ds)} is not supported; use stage 2 "
            f"(configs/deepspeed/zero2.json) or 3 (configs/deepspeed/zero3.json)"
        )
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


SUPPORTED_STAGES = (2, 3)


def build_model(cfg: TrainConfig, ds: dict, vocab_size: int, image_token_id: int) -> tuple[MageModel, object]:
    """MageModel, partitioned at construction under ZeRO-3. Keep the second value alive."""
    refusal = qlora.refusal(cfg.lora.quantize, zero_stage(ds))
    if refusal:
        raise ConfigError(refusal)
    zero3 = zero_stage(ds) == 3
    import torch._dynamo  # noqa: F401  (before zero.Init, else a "Signature mismatch" TypeError)

    hf_ds = None
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds)
    with deepspeed.zero.Init(config_dict_or_path=ds, enabled=zero3):
        model = MageModel(cfg.model, vocab_size, image_token_id)
    model.set_gradient_checkpointing(cfg.gradient_checkpointing.llm, cfg.gradient_checkpointing.vision)
    if zero3:
        deepspeed.zero.register_external_parameter(model, model.llm.get_output_embeddings().weight)
    return model, hf_ds


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))


def load_part(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy a full state dict into `module`, also when ZeRO-3 has partitioned its parameters."""
    own = dict(module.named_parameters())
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{what}: state does not match the module (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, p in own.items():
        if _shape(p) != tuple(state[name].shape):
            raise ValueError(f"{what}.{name}: checkpoint shape {tuple(state[name].shape)} but model shape {_shape(p)}")
    zero3 = any(hasattr(p, "ds_id") for p in own.values())
    with GatheredParameters(list(own.values()), modifier_rank=0, enabled=zero3):
        with torch.no_grad():
            for name, p in own.items():
                p.data.copy_(state[name].to(p.dtype))


def gathered_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of a module's parameters and buffers (gathered under ZeRO-3), on every rank."""
    params = list(module.parameters())
    zero3 = any(hasattr(p, "ds_id") for p in params)
    with GatheredParameters(params, modifier_rank=None, enabled=zero3):
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def export_state(model: MageModel) -> dict[str, dict[str, torch.Tensor]]:
    """`gathered_state` of every part `pretrained.write_export` writes, by part name; a part with
    LoRA adapters has them merged into its weights (the plain part's keys)."""
    return {part: lora.merged_state(mod, gathered_state(mod)) for part, mod in pretrained.export_parts(model).items()}


def apply_freeze(model: MageModel, cfg: TrainConfig) -> None:
    """Which parameters train: the freeze switches, then under `lora.enable` the base frozen and
    the adapters and `lora.train_fully` parts trainable (mage_fast.model.lora)."""
    for part in PARTS:
        short = "vision" if part == "vision_tower" else part
        if getattr(cfg, f"freeze_{short}"):
            getattr(model, part).requires_grad_(False)
    if cfg.lora.enable:
        lora.add_adapters(model, cfg.lora, torch.bfloat16 if cfg.bf16 else torch.float32)


def group_lr(part: str, cfg: TrainConfig) -> tuple[str, float]:
    """(param group name, learning rate) of a part: optim.lr_<part> or optim.lr; under LoRA the
    LLM's group holds only its adapters ("llm_lora") at lora.lr or optim.lr."""
    o, short = cfg.optim, "vision" if part == "vision_tower" else part
    if part == "llm" and cfg.lora.enable:
        return "llm_lora", cfg.lora.lr or o.lr
    return part, getattr(o, f"lr_{short}") or o.lr


def offloads_optimizer(ds: dict | None) -> bool:
    """ZeRO-Offload: the optimizer state and step live in CPU memory (`offload_optimizer.device`)."""
    off = (ds or {}).get("zero_optimization", {}).get("offload_optimizer") or {}
    return off.get("device", "none") == "cpu"


def adamw(groups: list[dict], cfg: TrainConfig, ds: dict | None) -> torch.optim.Optimizer:
    """The AdamW for where the step runs: DeepSpeed's CPU Adam (SIMD C++, adamw_mode) when ZeRO
    offloads the optimizer to the CPU, torch's fused AdamW (one multi-tensor CUDA kernel) on a
    GPU, torch's AdamW (foreach) on the CPU. The same math each time: decoupled weight decay,
    bias-corrected moments; each param group keeps its own learning rate."""
    o = cfg.optim
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, adamw_mode=True)
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=fused or None)


def build_optimizer(model: MageModel, cfg: TrainConfig, ds: dict | None = None) -> tuple[torch.optim.Optimizer, object]:
    """AdamW (see `adamw`) with one param group per trainable part, and warmup + cosine/constant schedule."""
    o = cfg.optim
    groups = []
    for part in PARTS:
        params = [p for p in getattr(model, part).parameters() if p.requires_grad]
        if params:
            name, lr = group_lr(part, cfg)
            groups.append({"params": params, "lr": lr, "name": name})
    opt = adamw(groups, cfg, ds)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        t = min(1.0, (step - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def initialize(model: MageModel, cfg: TrainConfig, ds: dict):
    """deepspeed.initialize with our optimizer and scheduler; returns the engine."""
    opt, sched = build_optimizer(model, cfg, ds)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        fused = " (fused)" if opt.defaults.get("fused") else ""
        lrs = ", ".join(f"{g['name']} {g.get('initial_lr', g['lr']):g}" for g in opt.param_groups)
        print(f"optimizer: {type(opt).__name__}{fused}, learning rates {lrs}", flush=True)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)
    return engine


# ---- non-finite steps: one global decision, and a skip that leaves no trace in the optimizer ----


def _is_zero3(engine) -> bool:
    return getattr(engine.optimizer, "grad_partitions_flat_buffer", None) is not None


def _zero12_partitions(engine) -> list[torch.Tensor] | None:
    """ZeRO-1/2 (DeepSpeedZeroOptimizer): this rank's reduced gradient partitions, or None.
    (It clears every `p.grad` after reducing, so `.grad` would read as zero.)"""
    avg = getattr(engine.optimizer, "averaged_gradients", None)
    if not isinstance(avg, dict):
        return None
    out: list[torch.Tensor] = []
    for v in avg.values():
        if v is None:
            continue
        out.extend(v if isinstance(v, (list, tuple)) else [v])
    return out


def local_grads(engine) -> list[torch.Tensor]:
    """This rank's share of the gradients after the boundary backward: its reduced partition under
    ZeRO-3 (one flat buffer) and ZeRO-2 (one tensor per parameter slice), disjoint across ranks, so
    squared norms add up to the global one."""
    if _is_zero3(engine):
        return [engine.optimizer.grad_partitions_flat_buffer]
    parts = _zero12_partitions(engine)
    if parts is None:
        raise NotImplementedError(
            f"gradient partitions of {type(engine.optimizer).__name__} are unknown: use ZeRO stage 2 or 3"
        )
    return parts


def grad_sumsq(engine) -> float:
    """Squared L2 norm of this rank's gradient share (inf/nan when any element is)."""
    total = torch.zeros((), dtype=torch.float64)
    for g in local_grads(engine):
        total += torch.linalg.vector_norm(g.detach(), 2, dtype=torch.float32).double().cpu() ** 2
    return float(total)


def skip_step(engine) -> None:
    """Drop this step's gradients without an optimizer or scheduler update (call on every rank).

    DeepSpeed's ZeRO optimizers have an overflow path (used for fp16) that discards the reduced
    gradient partitions and leaves AdamW untouched; the engine then counts `skipped_steps` and does
    not step the LR scheduler. It is forced here for one `engine.step()`, so DeepSpeed's own
    bookkeeping stays consistent.
    """
    opt = engine.optimizer
    if _is_zero3(engine) and hasattr(opt, "_loss_scale_update_and_overflow_cleanup"):

        def forced(update_scale: bool = True) -> bool:
            opt.overflow = True
            return opt._loss_scale_update_and_overflow_cleanup() if update_scale else True

        patched = {"_overflow_check_and_loss_scale_update": forced}
    elif _zero12_partitions(engine) is not None and hasattr(opt, "check_overflow"):

        def forced12(partition_gradients: bool = True) -> None:
            opt.overflow = True

        patched = {"check_overflow": forced12, "check_grad_overflow": True}
    else:
        raise NotImplementedError(
            f"skipping a non-finite step is implemented for DeepSpeed's ZeRO-2/3 optimizers, not "
            f"{type(opt).__name__} (use configs/deepspeed/zero2.json or zero3.json)"
        )
    saved = {k: opt.__dict__[k] for k in patched if k in opt.__dict__}
    opt.__dict__.update(patched)
    try:
        engine.step()
    finally:
        for k in patched:  # back to the class method / the instance's own value
            if k in saved:
                opt.__dict__[k] = saved[k]
            else:
                del opt.__dict__[k]
    opt.overflow = False


def optimizer_updates(engine) -> int:
    """How many updates AdamW has applied (its own `step` state), for logs and tests."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def _numel(p: torch.Tensor) -> int:
    """Weights `p` holds: its full size under ZeRO-3; a packed 4-bit weight (QLoRA) counts the
    weights it stands for (its quant state's shape), not its bytes."""
    qs = getattr(p, "quant_state", None)
    return int(qs.shape.numel()) if qs is not None else int(getattr(p, "ds_numel", p.numel()))


def param_counts(module: nn.Module) -> dict[str, int]:
    """{"trainable", "total"}: full (unpartitioned) parameter counts of `module`."""
    n = {p: _numel(p) for p in module.parameters()}
    return {"trainable": sum(v for p, v in n.items() if p.requires_grad), "total": sum(n.values())}


def optimizer_state_bytes(engine) -> int:
    """Bytes of optimizer state over all ranks: the fp32 master-weight partitions and every tensor
    AdamW keeps (moments, step). Frozen parameters are in no param group and cost nothing here."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    tensors = [t for st in inner.state.values() for t in st.values() if torch.is_tensor(t)]
    tensors += _fp32_partitions(engine)
    return int(all_reduce_vec([float(sum(t.numel() * t.element_size() for t in tensors))])[0])


def param_shapes(module: nn.Module) -> dict[str, list[int]]:
    """Full (unpartitioned) shape of every parameter, by name."""
    return {name: list(_shape(p)) for name, p in module.named_parameters()}


def _fp32_partitions(engine) -> list[torch.Tensor]:
    """This rank's fp32 master-weight partitions (ZeRO-3: flat groups; ZeRO-2: one per group)."""
    opt = engine.optimizer
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
        parts = getattr(opt, name, None)
        if parts is not None:
            return list(parts)
    raise NotImplementedError(f"fp32 partitions of {type(opt).__name__} are unknown: use ZeRO stage 2 or 3")


def step_probe(engine) -> dict:
    """Per-step facts for tests and logs (`faults.probe: true`): each group's learning rate, how often
    the LR scheduler stepped, and a checksum (sum and sum of squares, fp64, over all ranks) of the
    fp32 master weights, which an update changes and a skipped step must not."""
    s = s2 = 0.0
    for p in _fp32_partitions(engine):
        x = p.detach().double()
        s, s2 = s + float(x.sum()), s2 + float((x * x).sum())
    total, squares = all_reduce_vec([s, s2])
    groups = engine.optimizer.param_groups
    return {
        "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(groups)},
        "sched_steps": int(engine.lr_scheduler.last_epoch),
        "param_sum": [total, squares],
    }


class OptimizerTimer:
    """Wall time of the AdamW math inside `engine.step()` (the inner optimizer's `step`, called
    once per ZeRO sub-group), for benchmarks: `ms` is the total since construction. On CUDA each
    call is synchronised before and after, so it measures the kernels, not their launch."""

    def __init__(self, engine) -> None:
        self.ms, inner = 0.0, getattr(engine.optimizer, "optimizer", engine.optimizer)
        real = inner.step

        def timed(*args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = real(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ms += (time.perf_counter() - t0) * 1e3
            return out

        inner.step = timed
        self.kind = f"{type(inner).__name__}{' fused' if inner.defaults.get('fused') else ''}"
