"""Every aligner exports as a transformers folder (remote code, mage_fast.export) that loads
through AutoProcessor + AutoModelForImageTextToText in a child process whose import system refuses
mage_fast, renders our template byte for byte, tokenises and preprocesses as we do, and answers as
mage_fast.apps.chat does (greedy), with logits and visual tokens equal to ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.data.image import load_image
from mage_fast.data.llava_conv import make_template
from mage_fast.export.pretrained import image_transform, load_pretrained

KINDS = {"ian": "default", "sam": "default", "pool_mlp": "default", "linear": "vicuna_v1", "mlp2x_gelu": "default"}
FOLDERS = [*KINDS, "llava"]  # llava: the mlp2x_gelu model as a LlavaForConditionalGeneration folder
QUESTION = "what colour is the circle ?"
TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "what is it ?\n<image>"},
    {"role": "assistant", "content": "a red circle ."},
    {"role": "user", "content": "and where ?"},
]
MAX_NEW = 8
pytestmark = pytest.mark.slow  # one child process loads five models through transformers


def _export(kind: str, template: str, tokenizer, root) -> tuple[str, str]:
    """A tiny random model with every aligner weight random (no zero-initialised path), in the
    mage-fast format and as a transformers folder."""
    import dataclasses

    from mage_fast.export import pretrained
    from mage_fast.export.hf import export_hf
    from mage_fast.model.mllm import MageModel
    from mage_fast.train.engine import export_state

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_config(kind), template=template)
    model = MageModel(cfg, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    with torch.no_grad():
        for p in model.aligner.parameters():
            p.normal_(0, 0.3)
    src, out = str(root / kind), str(root / f"{kind}_hf")
    pretrained.write_export(src, model.eval(), tokenizer, export_state(model))
    export_hf(src, out)
    return src, out


@pytest.fixture(scope="module")
def exported(tokenizer, shapes_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_export")
    from mage_fast.export.llava import export_llava_folder

    folders = {k: _export(k, t, tokenizer, root) for k, t in KINDS.items()}
    folders["llava"] = (folders["mlp2x_gelu"][0], str(root / "llava"))
    export_llava_folder(*folders["llava"])
    images = [os.path.join(shapes_dir, "images", n) for n in sorted(os.listdir(os.path.join(shapes_dir, "images")))[:2]]
    spec = {"folders": {k: hf for k, (_, hf) in folders.items()}, "images": images, "question": QUESTION,
            "turns": TURNS, "max_new_tokens": MAX_NEW}  # fmt: skip
    (root / "spec.json").write_text(json.dumps(spec))
    child = os.path.join(os.path.dirname(__file__), "hf_child.py")
    env = dict(os.environ, HF_MODULES_CACHE=str(root / "hf_modules"), PYTHONPATH="")
    res = subprocess.run([sys.executable, child, str(root / "spec.json"), str(root / "out.json")],
                         cwd=str(root), env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return {"src": {k: s for k, (s, _) in folders.items()}, "images": images,
            "got": json.loads((root / "out.json").read_text())}  # fmt: skip


def _ours(src: str):
    model, tok = load_pretrained(src)
    return model, tok, make_template(tok, model.num_image_tokens, model.cfg.template)


def test_the_child_could_not_import_mage_fast(exported) -> None:
    assert exported["got"]["mage_fast_importable"] is False
    assert {exported["got"][k]["class"] for k in KINDS} == {"MageForConditionalGeneration"}
    assert exported["got"]["llava"]["class"] == "LlavaForConditionalGeneration"


@pytest.mark.parametrize("kind", FOLDERS)
def test_chat_template_renders_ours_byte_for_byte(exported, kind) -> None:
    _, _, template = _ours(exported["src"][kind])
    got = exported["got"][kind]
    want = template.render([{"role": "user", "content": "<image>\n" + QUESTION}], add_generation_prompt=True)[0]
    print(repr(got["prompt"]), repr(want))
    assert got["prompt"] == want
    assert got["conversation"] == template.render([dict(t) for t in TURNS])[0]


@pytest.mark.parametrize("kind", FOLDERS)
def test_processor_tokenises_and_preprocesses_as_we_do(exported, kind) -> None:
    src, got = exported["src"][kind], exported["got"][kind]
    _, _, template = _ours(src)
    ids = template.encode_prompt([{"from": "human", "value": "<image>\n" + QUESTION}])
    assert got["input_ids"] == ids.tolist()
    pix = image_transform(src, 24)(load_image(exported["images"][0]))
    # ours is the same code; transformers' CLIP image processor rescales in float64 first
    tol = 0 if kind != "llava" else 1e-6
    torch.testing.assert_close(torch.tensor(got["pixel_values"]).view_as(pix), pix, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", FOLDERS)
@torch.no_grad()
def test_logits_and_visual_tokens_equal_ours(exported, kind) -> None:
    src, got = exported["src"][kind], exported["got"][kind]
    model, _, template = _ours(src)
    transform = image_transform(src, model.image_size)
    pix = torch.stack([transform(load_image(p)) for p in exported["images"]])
    # sam: the two images of one sample guide each other; a LLaVA folder takes one image a sample
    z = model.encode_images(pix[:1]) if kind == "llava" else model.encode_images(pix, torch.tensor([len(pix)]))
    torch.testing.assert_close(torch.tensor(got["features"]).view_as(z), z, rtol=1e-4, atol=1e-4)
    ids = template.encode_prompt([{"from": "human", "value": "<image>\n" + QUESTION}])[None]
    embeds, _ = model.embed(ids, pix[:1], torch.tensor([1]))
    logits = model.llm(inputs_embeds=embeds).logits[0, -1]
    torch.testing.assert_close(torch.tensor(got["last_logits"]), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", FOLDERS)
def test_generate_answers_as_mage_fast_chat(exported, kind) -> None:
    from mage_fast.apps.chat import answer

    want = answer(exported["src"][kind], exported["images"][:1], QUESTION, MAX_NEW)
    print(kind, repr(exported["got"][kind]["answer"]), repr(want))
    assert exported["got"][kind]["answer"] == want and want


def test_a_template_without_an_exported_chat_template_raises(tokenizer) -> None:
    from mage_fast.export.chat_templates import chat_template

    with pytest.raises(ValueError, match="'plain' has no exported chat template yet"):
        chat_template("plain", tokenizer)


@pytest.mark.parametrize("name", ["default", "vicuna_v1"])
def test_without_bos_the_template_is_ours_minus_the_bos(tokenizer, name) -> None:
    """For a processor whose tokenizer adds the BOS itself (a LLaVA folder's Llama tokenizer)."""
    from mage_fast.export.chat_templates import chat_template

    template = make_template(tokenizer, 4, name)
    msgs = [{"role": "user", "content": "<image>\nwhat ?"}]
    want = template.render(msgs, add_generation_prompt=True)[0]
    for bos in (True, False):
        got = tokenizer.apply_chat_template(
            msgs, chat_template=chat_template(name, tokenizer, bos=bos), add_generation_prompt=True, tokenize=False
        )
        assert got == (want if bos else want.removeprefix(tokenizer.bos_token)) and want.startswith(tokenizer.bos_token)
