"""Ask an exported model about images.

    python -m mage_fast.chat --model DIR --image x.png "what shape is at top left ?"

One `<image>` placeholder per --image is put before the question unless the question already
holds them. Greedy decoding; prints the answer.
"""

from __future__ import annotations

import argparse

import torch

from mage_fast.data.image import load_image
from mage_fast.data.llava_conv import make_template
from mage_fast.data.tokens import IMAGE_TOKEN
from mage_fast.model.pretrained import image_transform, load_pretrained


@torch.no_grad()
def answer(model_dir: str, images: list[str], question: str, max_new_tokens: int = 32) -> str:
    model, tok = load_pretrained(model_dir)
    if IMAGE_TOKEN not in question:
        question = "\n".join([IMAGE_TOKEN] * len(images) + [question])
    n = question.count(IMAGE_TOKEN)
    if n != len(images):
        raise ValueError(f"the question holds {n} {IMAGE_TOKEN} placeholder(s) but {len(images)} --image given")
    template = make_template(tok, model.num_image_tokens, model.cfg.template)
    ids = template.encode_prompt([{"from": "human", "value": question}])
    transform = image_transform(model_dir, model.image_size)
    s = model.image_size
    pix = torch.stack([transform(load_image(p)) for p in images]) if images else torch.zeros(0, 3, s, s)
    out = model.generate(ids[None], pix, torch.tensor([len(images)]), max_new_tokens, tok.eos_token_id)
    return tok.decode(out[0], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported model folder (run_dir/export)")
    p.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("question")
    a = p.parse_args(argv)
    print(answer(a.model, a.image, a.question, a.max_new_tokens))


if __name__ == "__main__":
    main()
