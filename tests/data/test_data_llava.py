"""LlavaDataset: valid rows, every skip reason with real broken files, the threshold error, config."""

from __future__ import annotations

import os

import pytest
import torch
from _data_helpers import make_tokenizer, qa, write_png, write_rows, write_truncated

from mage_fast.data import IGNORE_INDEX, DataConfig, DataError, ImageTransform, LlavaDataset
from mage_fast.toolcall.format import TOOL_REASONS

K, S = 4, 8


def make_ds(path, tok, root, **kw) -> LlavaDataset:
    args = dict(image_root=root, transform=ImageTransform(S), num_image_tokens=K, max_length=64, max_bad_fraction=0.0)
    return LlavaDataset(str(path), tok, **(args | kw))


@pytest.fixture
def root(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_png(str(tmp_path / "img" / name), seed=len(name) + ord(name[0]))
    return tmp_path


def good_rows() -> list[dict]:
    two = [
        {"from": "human", "value": "<image> and <image> what"},
        {"from": "gpt", "value": "two"},
        {"from": "human", "value": "left ?"},
        {"from": "gpt", "value": "red"},
    ]
    return [
        qa("single", "a.png", caption="a red circle", qtype="color"),
        {"id": "multi", "image": ["b.png", "c.png"], "conversations": two, "caption": ["blue square", None]},
        qa("text", None, q="what is this"),
        {
            "id": 7,
            "image": "a.png",
            "conversations": [{"from": "system", "value": "you are helpful"}]
            + qa("x", q="what <image>")["conversations"],
        },
    ]


@pytest.mark.parametrize("name", ["train.json", "train.jsonl"])
def test_valid_rows(root, tok, name):
    ds = make_ds(write_rows(str(root / name), good_rows()), tok, root / "img")
    assert len(ds) == 4 and ds.stats.skipped == 0 and ds.stats.total == 4
    img_id = tok.convert_tokens_to_ids("<image>")
    by_id = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert set(by_id) == {"single", "multi", "text", "7"}
    for sid, n_img in [("single", 1), ("multi", 2), ("text", 0), ("7", 1)]:
        s = by_id[sid]
        assert s["input_ids"].dtype == s["labels"].dtype == torch.long
        assert s["input_ids"].shape == s["labels"].shape and len(s["input_ids"]) <= 64
        assert s["pixel_values"].shape == (n_img, 3, S, S) and s["pixel_values"].dtype == torch.float32
        assert int((s["input_ids"] == img_id).sum()) == n_img * K
        assert (s["labels"] != IGNORE_INDEX).any() and len(s["caption_ids"]) == n_img
    assert tok.decode(by_id["single"]["caption_ids"][0]) == "a red circle"
    multi = by_id["multi"]["caption_ids"]
    assert tok.decode(multi[0]) == "blue square" and multi[1].numel() == 0 and multi[1].dtype == torch.long
    assert tok.convert_ids_to_tokens(multi_labels(by_id["multi"])) == ["two", "</s>", "red", "</s>"]
    assert ds.lengths == [len(ds[i]["input_ids"]) for i in range(len(ds))]
    # a different image per position, in row order
    assert not torch.equal(by_id["multi"]["pixel_values"][0], by_id["multi"]["pixel_values"][1])


def multi_labels(sample) -> list[int]:
    return sample["labels"][sample["labels"] != IGNORE_INDEX].tolist()


def test_every_skip_reason(root, tok):
    img = root / "img"
    write_truncated(str(img / "trunc.png"), "PNG")
    write_truncated(str(img / "trunc.jpg"), "JPEG")
    long_q = " ".join(["<image>"] * 8)
    rows = good_rows() + [
        {"id": "no_conv", "image": "a.png"},  # malformed
        qa("bad_caps", ["a.png", "b.png"], q="<image> <image>", caption=["x"]),  # malformed: 1 caption
        qa("bad_turn", None, q="what") | {"conversations": [{"from": "bot", "value": "x"}]},  # malformed
        qa("missing", "nope.png"),
        qa("trunc_png", "trunc.png"),
        qa("trunc_jpg", "trunc.jpg"),
        qa("two_ph", "a.png", q="<image> <image> what"),  # placeholder_mismatch
        qa("no_ph", ["a.png", "b.png"], q="what <image>"),  # placeholder_mismatch
        qa("ph_in_answer", "a.png", a="a <image>"),  # placeholder_mismatch
        qa("ph_text_only", None),  # placeholder_mismatch: <image> but no image
        qa("too_long", ["a.png"] * 8, q=long_q),  # over_length: 8*K + text > 30
        {"id": "no_answer", "image": "a.png", "conversations": [{"from": "human", "value": "<image>"}]},
    ]
    path = str(root / "train.jsonl")
    write_rows(path, rows)
    with open(path, "a") as f:
        f.write("{not json\n")  # malformed JSONL line
    ds = make_ds(path, tok, img, max_length=30, max_bad_fraction=1.0)
    st = ds.stats
    assert st.ids == {
        "malformed": ["no_conv", "bad_caps", "bad_turn", f"line {len(rows) + 1}"],
        "missing_image": ["missing"],
        "corrupt_image": ["trunc_png", "trunc_jpg"],
        "placeholder_mismatch": ["two_ph", "no_ph", "ph_in_answer", "ph_text_only"],
        "over_length": ["too_long"],
        "no_labels": ["no_answer"],
        **{r: [] for r in TOOL_REASONS},  # tool rows: tests/tools/test_tools_validate.py
    }
    assert st.counts["malformed"] == 4 and st.total == len(rows) + 1 and st.kept == len(ds) == 4
    assert "missing_image=1" in st.summary() and "\n" not in st.summary()
    assert "nope.png" in st.examples["missing_image"] and "30" in st.examples["over_length"]


def test_threshold_error_names_dominant_reason(root, tok):
    rows = [qa(f"ok{i}", "a.png") for i in range(7)] + [qa("gone1", "x.png"), qa("gone2", "y.png")]
    rows.append(qa("ph", "a.png", q="what"))
    path = write_rows(str(root / "train.json"), rows)
    with pytest.raises(DataError, match=r"3/10 .*missing_image: 2.*gone1.*gone2") as e:
        make_ds(path, tok, root / "img", max_bad_fraction=0.2)
    assert isinstance(e.value, ValueError) and "x.png" in str(e.value)
    assert len(make_ds(path, tok, root / "img", max_bad_fraction=0.3)) == 7


def test_nothing_usable_raises(root, tok):
    path = write_rows(str(root / "train.json"), [qa("gone", "x.png")])
    with pytest.raises(DataError, match="missing_image"):
        make_ds(path, tok, root / "img", max_bad_fraction=1.0)
    with pytest.raises(DataError, match="no samples"):
        make_ds(write_rows(str(root / "empty.json"), []), tok, root / "img", max_bad_fraction=1.0)
    (root / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        make_ds(root / "broken.json", tok, root / "img")


def test_image_failing_after_validation_is_replaced_and_recorded(root, tok):
    # The structure check passed; the decode in the loader fails: the next good sample stands in,
    # the same one every time, and the log names both. With no good sample left: a DataError.
    late = str(root / "late.jsonl")
    ds = make_ds(write_rows(str(root / "train.json"), [qa("s1", "a.png"), qa("s2", "b.png")]), tok, root / "img",
                 late_log=late)  # fmt: skip
    write_truncated(str(root / "img" / "a.png"), "PNG")
    assert ds[0]["id"] == "s2" and ds[0]["id"] == "s2" and ds[1]["id"] == "s2"
    assert [(r["id"], r["replaced_by"]) for r in ds.late] == [("s1", "s2"), ("s1", "s2")]
    assert "a.png" in ds.late[0]["detail"]
    from mage_fast.data.llava import read_late_logs

    assert read_late_logs([late]) == {"corrupt_image": {"ids": ["s1", "s1"], "replaced_by": ["s2", "s2"]}}
    os.remove(root / "img" / "b.png")
    with pytest.raises(DataError, match=r"'s1'.*a\.png"):
        ds[0]


def test_uncached_and_chat_template_routes(root, tok):
    path = write_rows(str(root / "train.json"), good_rows())
    cached, uncached = make_ds(path, tok, root / "img"), make_ds(path, tok, root / "img", cache_tokens=False)
    for i in range(len(cached)):
        assert torch.equal(cached[i]["input_ids"], uncached[i]["input_ids"])
        assert torch.equal(cached[i]["labels"], uncached[i]["labels"])
    chat_tok = make_tokenizer(chat=True)
    s = make_ds(path, chat_tok, root / "img")[0]
    assert chat_tok.convert_ids_to_tokens(multi_labels(s)) == ["a", "red", "circle", "<|im_end|>"]


def test_from_config(root, tok):
    write_rows(str(root / "train.jsonl"), good_rows())
    cfg = DataConfig(root=str(root), train="train.jsonl", image_folder="img", max_length=64)
    ds = LlavaDataset.from_config(cfg, tok, transform=ImageTransform(S), num_image_tokens=K)
    assert len(ds) == 4 and ds.max_length == 64
    with pytest.raises(ValueError, match="eval"):
        LlavaDataset.from_config(cfg, tok, transform=ImageTransform(S), num_image_tokens=K, split="eval")


@pytest.mark.parametrize(
    "bad", [dict(max_length=0), dict(max_bad_fraction=1.5), dict(num_workers=-1), dict(train=""), dict(eval="")]
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        DataConfig(**bad)
