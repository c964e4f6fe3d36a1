"""eval/interleaved.py: interleaved latency ratios (structure and arguments; no timing asserts)."""
import importlib.util
import json
from pathlib import Path

import pytest

from dctnet_lite import create_model
from dctnet_lite.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("eval_interleaved_t", REPO / "eval" / "interleaved.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_checkpoint_is_timed_each_round_and_ratios_are_to_the_first(tmp_path):
    mod = _module()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(a, create_model("official_c16n4"))
    save_checkpoint(b, create_model("dctnet_w16"))
    out = tmp_path / "r.json"
    assert mod.main([str(a), str(b), "--sizes", "32", "--precisions", "fp32", "--rounds", "2",
                     "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["checkpoint"], r["size"], r["precision"], r["rounds"]) for r in rows] == \
        [(str(a), 32, "fp32", 2), (str(b), 32, "fp32", 2)]
    assert rows[0]["ratio_to_first"] == 1.0 and rows[1]["ratio_to_first"] > 0
    assert all(r["min_ms"] <= r["median_ms"] for r in rows)


def test_bad_arguments_are_refused():
    mod = _module()
    with pytest.raises(SystemExit):
        mod.main(["x.safetensors", "--rounds", "0"])
