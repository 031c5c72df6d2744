"""Ask an exported model about images.

    python -m mage_fast.apps.chat --model DIR --image x.png "what shape is at top left ?"

One `<image>` placeholder per --image is put before the question unless the question already
holds them. Greedy decoding; prints the answer.

    python -m mage_fast.apps.chat --model DIR --tools [--tool-module M] [--image x.png] "draw a red circle at top ."

With ``--tools`` the model may call the built-in tools (and those of each ``--tool-module``):
each call is printed, run, and its result fed back (an image result as an image), until a final
answer or ``--max-steps`` model turns (:mod:`mage_fast.apps.tools.agent`). Images the tools produce
are saved under ``--save-dir`` and their paths printed.
"""

from __future__ import annotations

import argparse
import json

import torch

from mage_fast.apps.tools.agent import Episode, load_agent
from mage_fast.data.image import load_image
from mage_fast.data.llava_conv import make_template
from mage_fast.data.tokens import IMAGE_TOKEN
from mage_fast.export.pretrained import image_transform, load_pretrained


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


def run_tools(a: argparse.Namespace, question: str) -> int:
    """The tool loop for one question; prints calls, observations, saved images, the answer."""
    import os

    agent = load_agent(
        a.model, a.tool_module, timeout_s=a.tool_timeout, max_steps=a.max_steps, max_new_tokens=a.max_new_tokens
    )
    images = [load_image(p) for p in a.image]
    ep = agent.run([Episode([{"from": "human", "value": question}], images)])[0]
    os.makedirs(a.save_dir, exist_ok=True)
    saved = 0
    for k, step in enumerate(ep.steps):
        for call, obs in zip(step.calls, step.observations):
            print(f"step {k}: call {call.name} {json.dumps(call.arguments)}")
            for im in obs.images:
                while os.path.exists(path := os.path.join(a.save_dir, f"tool_image_{saved}.png")):
                    saved += 1  # never overwrite an earlier chat's images in the same folder
                im.save(path)
                print(f"step {k}: {call.name} -> image {path}")
            if not obs.images:
                print(f"step {k}: {call.name} -> {obs.text}")
    if ep.invalid:
        print(f"invalid call: {ep.invalid}\n{ep.steps[-1].text}")
        return 1
    print(ep.final if ep.final is not None else f"no final answer after {a.max_steps} steps")
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.apps.chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported model folder (run_dir/export)")
    p.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 32, 96 with --tools")
    p.add_argument("--tools", action="store_true", help="let the model call tools (the built-in ones)")
    p.add_argument("--tool-module", action="append", default=[], help="a module defining TOOLS; repeat")
    p.add_argument("--tool-timeout", type=float, default=30.0, help="seconds a tool call may run")
    p.add_argument("--max-steps", type=int, default=4, help="model turns at most (--tools)")
    p.add_argument("--save-dir", default="chat_images", help="where tool images are saved (--tools)")
    p.add_argument("question")
    a = p.parse_args(argv)
    if a.tool_module and not a.tools:
        p.error("--tool-module needs --tools")
    if a.tools:
        a.max_new_tokens = a.max_new_tokens or 96
        q = a.question
        if IMAGE_TOKEN not in q and a.image:
            q = "\n".join([IMAGE_TOKEN] * len(a.image) + [q])
        raise SystemExit(run_tools(a, q))
    print(answer(a.model, a.image, a.question, a.max_new_tokens or 32))


if __name__ == "__main__":
    main()
