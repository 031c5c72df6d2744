"""LoRA adapters (peft) on a MageModel: the base frozen, adapters on the LLM's linear layers (and
optionally the tower's), chosen parts trained fully (the aligner by default).

peft's `inject_adapter_in_model` replaces each target `nn.Linear` in place by a `lora.Linear`
whose `base_layer` is the original layer, so the LLM stays the transformers model the rest of
the code calls (`base_model`, `get_output_embeddings`) and no `PeftModel` wrapper sits in between.
Adapters are plain parameters created here; under ZeRO-3 DeepSpeed partitions them at
`deepspeed.initialize` like any parameter it finds unpartitioned.

The full state dict of an adapted module (gathered under ZeRO-3) becomes either the plain
module's state (`merged_state`: W + scaling * B A, the keys of the module without adapters) or
peft's adapter file (`adapter_state`: what `PeftModel.from_pretrained` reads).
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from mage_fast.model import qlora
from mage_fast.model.lora_config import LoraConfig

ADAPTER = "default"  # peft's adapter name; the only one a run trains


def _targets(module: nn.Module, names: list[str], blocks: str, what: str) -> str:
    """peft's target as one regex over full module names: `names` inside `blocks` (a prefix
    pattern), so a name shared with a layer outside the blocks is never adapted. Every name must
    match an nn.Linear there."""
    found = {
        n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear) and re.match(blocks, n)
    }
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(
            f"lora: {what} has no linear layer named {missing[0]!r} in its blocks; its linear layers are {sorted(found)}"
        )
    return rf"{blocks}(.*\.)?({'|'.join(map(re.escape, names))})"


def _peft_config(cfg: LoraConfig, target: str, base: str | None):
    """peft's LoraConfig for one adapted module; `base`: the folder of its base weights, if any."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        bias="none",
        base_model_name_or_path=os.path.abspath(base) if base else None,
    )


def adapted_modules(model) -> dict[str, nn.Module]:
    """The modules of a MageModel that carry adapters, by part name ("llm", "vision_tower")."""
    out = {"llm": model.llm, "vision_tower": model.vision_tower.tower}
    return {k: m for k, m in out.items() if lora_layers(m)}


def add_adapters(model, cfg: LoraConfig, compute_dtype: torch.dtype = torch.float32) -> None:
    """Freeze `model` (a MageModel) and add trainable adapters as `cfg` says; parts in
    `train_fully` keep the trainability they had (the tower's unused post-norm stays frozen).
    With `cfg.quantize="nf4"` the LLM's block linears first become 4-bit layers computing in
    `compute_dtype` (mage_fast.model.qlora), and peft puts its bnb LoRA layers on them."""
    from peft import inject_adapter_in_model

    trainable = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    if cfg.quantize == "nf4":
        qlora.quantize_llm(model.llm, compute_dtype)
    llm_target = _targets(model.llm, cfg.target_modules, r"model\.layers\.\d+\.", "the LLM")
    inject_adapter_in_model(_peft_config(cfg, llm_target, model.cfg.llm.path), model.llm, ADAPTER)
    if cfg.vision:
        tower = model.vision_tower.tower
        blocks = r"(vision_model\.)?encoder\.layers\.\d+\."
        target = _targets(tower, cfg.vision_target_modules, blocks, "the vision tower")
        inject_adapter_in_model(_peft_config(cfg, target, model.cfg.vision.path), tower, ADAPTER)
    for part in cfg.train_fully:
        for p in getattr(model, part).parameters():
            p.requires_grad_(trainable.get(p, True))


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers inside `module`, by module name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def _delta(layer, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """scaling * B A (out, in) in fp32, as peft's `get_delta_weight`, from full A (r, in), B (out, r)."""
    d = b.float() @ a.float()
    return (d.t() if layer.fan_in_fan_out else d) * layer.scaling[ADAPTER]


def merged_state(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain module's state dict from the full `state` of the adapted `module`: each adapted
    layer's weight is W + scaling * B A (computed in fp32, stored in W's dtype), adapter tensors
    dropped, `.base_layer.` removed from the names; a 4-bit base's W is its dequantised weight.
    A module without adapters: `state` itself."""
    state = qlora.dequantized_state(module, state)
    layers = lora_layers(module)
    if not layers:
        return state
    out = {}
    for key, value in state.items():
        owner = next((n for n in layers if key.startswith(n + ".lora_")), None)
        if owner is None:
            out[key.replace(".base_layer.", ".")] = value
    for name, layer in layers.items():
        a, b = state[f"{name}.lora_A.{ADAPTER}.weight"], state[f"{name}.lora_B.{ADAPTER}.weight"]
        w = out[f"{name}.weight"]
        out[f"{name}.weight"] = (w.float() + _delta(layer, a, b)).to(w.dtype)
    return out


def adapter_state(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of `state` under the names `PeftModel.save_pretrained` writes
    (`base_model.model.<module name>.lora_A.weight`, ...)."""
    from peft import get_peft_model_state_dict

    own = get_peft_model_state_dict(module, state_dict=state, adapter_name=ADAPTER)
    return {f"base_model.model.{k}": v.contiguous() for k, v in own.items()}


def write_adapter(out_dir: str, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A peft adapter folder (adapter_config.json, adapter_model.safetensors) of the adapted
    `module` from its full `state`: `PeftModel.from_pretrained(base, out_dir)` loads it."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    module.peft_config[ADAPTER].save_pretrained(out_dir)
    save_file(adapter_state(module, state), os.path.join(out_dir, "adapter_model.safetensors"), {"format": "pt"})
