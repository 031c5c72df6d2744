"""The adapter export of a LoRA run: `run_dir/export_adapter/`, small, on top of its base folders.

    DIR/mage_config.json        the ModelConfig, vision.path / llm.path naming the BASE folders
                                (absolute; the frozen weights the adapters were trained on)
    DIR/llm/                    peft adapter folder: PeftModel.from_pretrained(base LLM, DIR/llm)
    DIR/vision_tower/           peft adapter folder (lora.vision) or the full tower (train_fully)
    DIR/aligner/model.safetensors   the fully trained aligner
    DIR/tokenizer/
    DIR/quantize.json           QLoRA only: {"llm": "nf4", "compute_dtype": ...}, the 4-bit base the
                                adapters were trained on (mage_fast.model.qlora quantises the base
                                folder's LLM to it; the quantisation is deterministic)

`run_dir/export` is the merged one (adapters folded into the weights, a normal export). Under
ZeRO-3 the parts are gathered on every rank (`gathered_state`); rank 0 writes, into a temporary
sibling renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os

from safetensors.torch import save_file

from mage_fast.export.hf_llava import _staged  # the folder appears whole or not at all
from mage_fast.export.pretrained import CONFIG_NAME
from mage_fast.model import lora, qlora
from mage_fast.model.mllm import MageModel
from mage_fast.train.engine import gathered_state

ADAPTER_EXPORT = "export_adapter"


def _base_paths(model: MageModel, adapted: dict) -> dict[str, str | None]:
    """The base folder of each adapted part (None: built from a config, random weights)."""
    paths = {"llm": model.cfg.llm.path, "vision_tower": model.cfg.vision.path}
    return {part: paths[part] and os.path.abspath(paths[part]) for part in adapted}


def _write(tmp: str, model: MageModel, tokenizer, adapted: dict, states: dict, full: dict, bases: dict) -> None:
    cfg = model.cfg
    cfg = dataclasses.replace(
        cfg,
        llm=dataclasses.replace(cfg.llm, path=bases.get("llm") or cfg.llm.path),
        vision=dataclasses.replace(cfg.vision, path=bases.get("vision_tower") or cfg.vision.path),
        tokenizer="",
    )
    with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    for part, module in adapted.items():
        lora.write_adapter(os.path.join(tmp, part), module, states[part])
    if "vision_tower" in full:
        model.vision_tower.tower.save_pretrained(os.path.join(tmp, "vision_tower"), state_dict=full["vision_tower"])
    os.makedirs(os.path.join(tmp, "aligner"))
    aligner = {k: v.contiguous() for k, v in full["aligner"].items()}
    save_file(aligner, os.path.join(tmp, "aligner", "model.safetensors"))
    tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    four_bit = qlora.quantized_layers(model.llm)
    if four_bit:
        dtype = str(next(iter(four_bit.values())).compute_dtype).removeprefix("torch.")
        with open(os.path.join(tmp, qlora.QUANTIZE_NAME), "w") as f:
            json.dump({"llm": "nf4", "compute_dtype": dtype}, f)


def write_adapter_export(out_dir: str, model: MageModel, tokenizer, rank: int) -> bool:
    """Write `out_dir` (layout in the module docstring); call on every rank. Returns whether it was
    written: an adapted part without a base folder (random init) has nothing to load adapters on,
    so then only the merged export exists (the reason is printed)."""
    adapted = lora.adapted_modules(model)
    states = {part: gathered_state(m) for part, m in adapted.items()}
    full = {"aligner": gathered_state(model.aligner)}
    if "vision_tower" not in adapted and any(p.requires_grad for p in model.vision_tower.parameters()):
        full["vision_tower"] = gathered_state(model.vision_tower.tower)
    bases = _base_paths(model, adapted)
    if rank != 0:
        return True
    missing = [part for part, path in bases.items() if not path]
    if missing:
        print(f"no adapter export: {missing[0]} has no base folder (random init); {out_dir} not written", flush=True)
        return False
    with _staged(out_dir) as tmp:
        _write(tmp, model, tokenizer, adapted, states, full, bases)
    return True
