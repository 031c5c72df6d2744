"""Run in a child process by test_hf_export.py: loads exported folders through transformers'
auto classes while the import system refuses mage_fast, and writes what they produce as JSON.

    python hf_child.py SPEC.json OUT.json
"""

from __future__ import annotations

import json
import sys


class _RefuseMageFast:
    def find_spec(self, name, path=None, target=None):
        if name == "mage_fast" or name.startswith("mage_fast."):
            raise ImportError(f"{name} is refused in this process")


sys.meta_path.insert(0, _RefuseMageFast())

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402


def _mage_fast_importable() -> bool:
    try:
        import mage_fast  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def run(folder: str, images: list[str], question: str, turns: list[dict], max_new_tokens: int) -> dict:
    proc = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    pics = [Image.open(p) for p in images]

    def prompt_for(n: int) -> str:
        content = [{"type": "image"}] * n + [{"type": "text", "text": question}]
        return proc.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    prompt = prompt_for(1)
    conversation = proc.apply_chat_template(turns, add_generation_prompt=False, tokenize=False)
    one = proc(images=pics[:1], text=prompt, return_tensors="pt")
    out = model.generate(**one, max_new_tokens=max_new_tokens, do_sample=False)
    answer = proc.decode(out[0, one["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    logits = model(**one).logits[0, -1]
    if "image_counts" in one:  # a mage folder: the visual tokens of a two-image sample too
        several = proc(images=pics, text=prompt_for(len(pics)), return_tensors="pt")
        features = model.get_image_features(several["pixel_values"], several["image_counts"]).flatten().tolist()
    else:  # a LLaVA folder: one image per sample
        features = torch.cat(list(model.get_image_features(one["pixel_values"]).pooler_output)).flatten().tolist()
    return {
        "class": type(model).__name__, "prompt": prompt, "conversation": conversation, "answer": answer,
        "input_ids": one["input_ids"][0].tolist(), "pixel_values": one["pixel_values"].flatten().tolist(),
        "last_logits": logits.tolist(), "features": features,
    }  # fmt: skip


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = {"mage_fast_importable": _mage_fast_importable()}
    for name, folder in spec["folders"].items():
        out[name] = run(folder, spec["images"], spec["question"], spec["turns"], spec["max_new_tokens"])
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
