"""QLoRA's 4-bit base: the LLM's block linears as bitsandbytes `Linear4bit` (NF4, double
quantisation), as transformers' `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True)` quantises a causal LM: every linear layer of the blocks, never
`lm_head` or the embeddings (nor the vision tower or the aligner, which are not the LLM).

Each weight (out, in) becomes a packed uint8 `Params4bit` (out * in / 2 bytes, one 4-bit code per
weight) with its `quant_state`: one absmax per block of 64 weights, themselves quantised to 8 bits
per block of 256 (double quantisation). The layer computes in `compute_dtype` from the dequantised
weight. peft then wraps these layers with its bnb LoRA layers (`lora.Linear4bit`).

A state dict of a quantised module holds the packed weight plus the quant state's tensors
(`<layer>.weight.absmax`, `.quant_map`, `.nested_absmax`, ...); `dequantized_state` turns it
into the plain module's state (the merged export) and loading one restores the quant state it
holds, so a resumed run computes with the checkpoint's 4-bit base.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

BLOCKS = "model.layers."  # the LLM's decoder blocks (Llama, Qwen2); lm_head and embeddings are outside
QUANTIZE_NAME = "quantize.json"  # an adapter export's record of the 4-bit base it was trained on


def refusal(quantize: str, zero_stage: int) -> str | None:
    """Why a `lora.quantize` base cannot be built here (one line), or None when it can (or none is asked)."""
    if quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return (
            f"lora.quantize={quantize} needs bitsandbytes' 4-bit layers, which are not installed "
            f"(pip install bitsandbytes==0.50.2, or use lora.quantize=none: LoRA on the unquantised base)"
        )
    if zero_stage == 3:
        return (
            f"lora.quantize={quantize} under ZeRO-3: ZeRO-3 partitions every parameter, and a packed 4-bit "
            f"weight split across ranks loses its quantisation state; use ZeRO-2 (configs/deepspeed/zero2.json), "
            f"which keeps the frozen 4-bit base whole on each rank, or lora.quantize=none under ZeRO-3"
        )
    return None


def _nf4(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    """A bnb `Linear4bit` (NF4, double quantisation) holding `linear`'s weight quantised, its bias as is."""
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    weight = linear.weight.detach().to("cpu", copy=True)
    packed = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q)
    q.weight = packed.to(linear.weight.device)  # quantises here (bnb quantises on the move to a device)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    # bnb's CPU inference path (eval, no grad, AVX512-BF16) repacks the weight for its own GEMM:
    # other numerics than training's dequantise-then-matmul, and it fails for in_features < 64.
    q.support_avx512bf16_for_cpu = False
    q._register_load_state_dict_pre_hook(_restore_quant_state, with_module=True)
    return q


def quantize_llm(llm: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear inside `llm`'s blocks by its NF4 `Linear4bit`, in place; mark the
    model 4-bit (`is_loaded_in_4bit`, what peft dispatches its bnb LoRA layers on). Returns how
    many layers were quantised. The weights must be the final base (loaded before this)."""
    if quantized_layers(llm):  # a Linear4bit is an nn.Linear: quantising it again would read codes as weights
        raise ValueError("lora.quantize: the LLM is 4-bit already")
    targets = [(n, m) for n, m in llm.named_modules() if isinstance(m, nn.Linear) and n.startswith(BLOCKS)]
    if not targets:
        raise ValueError(f"lora.quantize: the LLM has no linear layer under {BLOCKS!r} to quantise")
    for name, linear in targets:
        parent, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent), child, _nf4(linear, compute_dtype))
    llm.is_loaded_in_4bit = True
    return len(targets)


def quantized_layers(module: nn.Module) -> dict[str, nn.Module]:
    """bnb `Linear4bit` layers inside `module`, by module name ({} when bitsandbytes is absent)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return {}
    import bitsandbytes as bnb

    return {n: m for n, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _quant_state(state: dict[str, torch.Tensor], prefix: str, device: torch.device):
    """The QuantState stored under `prefix` (`<layer>.weight.`) in `state`, and its keys."""
    from bitsandbytes.functional import QuantState

    keys = [k for k in state if k.startswith(prefix)]
    return QuantState.from_dict({k[len(prefix) :]: state[k] for k in keys}, device=device), keys


def _restore_quant_state(module, state: dict, prefix: str, *args) -> None:
    """Load hook of a `Linear4bit`: the packed weight and the quant state from `state` (plain
    packing), so the layer computes with what was saved; the quant keys leave `state`."""
    if f"{prefix}weight.absmax" not in state:
        return
    qs, keys = _quant_state(state, f"{prefix}weight.", module.weight.device)
    for k in keys:
        state.pop(k)
    module.weight.data = state[f"{prefix}weight"].detach().to(module.weight.device, copy=True)
    module.weight.quant_state = qs
    module.quant_state = qs


def dequantized_state(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (a full state dict of `module`) with each 4-bit layer's packed weight replaced by
    its dequantised (out, in) weight, the quant state's keys dropped: the state of the same module
    with plain linears. The dequantised weights take the dtype of the module's other floating
    weights (a bf16 run's base was quantised from fp32 weights). No 4-bit layer: `state` itself."""
    layers = quantized_layers(module)
    if not layers:
        return state
    from bitsandbytes.functional import dequantize_4bit

    own = tuple(f"{name}.weight" for name in layers)
    dtype = next((v.dtype for k, v in state.items() if v.is_floating_point() and not k.startswith(own)), None)
    out = dict(state)
    for name in layers:
        qs, keys = _quant_state(state, f"{name}.weight.", torch.device("cpu"))
        for k in keys:
            out.pop(k)
        w = dequantize_4bit(state[f"{name}.weight"].to("cpu"), qs)
        out[f"{name}.weight"] = w.to(dtype or w.dtype)
    return out


def footprint(module: nn.Module) -> tuple[int, int]:
    """(bytes the 4-bit layers inside `module` hold for their weights: packed codes plus every
    quant-state tensor, how many weights they stand for); (0, 0) without 4-bit layers."""
    held = weights = 0
    for layer in quantized_layers(module).values():
        state = layer.state_dict()
        state.pop("bias", None)
        held += sum(t.numel() * t.element_size() for t in state.values())
        weights += layer.in_features * layer.out_features
    return held, weights
