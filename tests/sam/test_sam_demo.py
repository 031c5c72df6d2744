"""demo-multi's results: the markdown table (both aligners per metric, every task), JSON and PNG."""

from __future__ import annotations

import json

from mage_fast.demo_multi import write_results


def test_write_results(tmp_path):
    row = {"n": 2, "BLEU-4": 1.0, "ROUGE-L": 2.0, "CIDEr-D": 3.0}
    table = {"ian": {"group": row, "all": row}, "sam": {"group": dict(row, **{"CIDEr-D": 4.5}), "all": row}}
    md = write_results(str(tmp_path), table, {"ian": 0.2, "sam": 0.3}, {"ian": 10.0, "sam": 12.0}, 7)
    print(md)
    lines = md.splitlines()
    assert lines[0].startswith("| task | n | BLEU-4 ian | BLEU-4 sam |")
    assert lines[2] == "| group | 2 | 1.00 | 1.00 | 2.00 | 2.00 | 3.00 | 4.50 |"
    assert "ratio sam/ian 1.50" in md and "steps per aligner: 7" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert abs(saved["ratio"] - 1.5) < 1e-12 and saved["scores"]["sam"]["group"]["CIDEr-D"] == 4.5
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
