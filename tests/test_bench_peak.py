"""bench: the measured matmul peak per dtype and each row's fraction of it (CPU, small; speed never asserted)."""
import json

import pytest
import torch

from dctnet_lite import ArchConfig
from dctnet_lite.profile import count_macs
from dctnet_lite.tools import bench as bench_mod


@pytest.fixture
def fresh_peaks(monkeypatch):
    """An empty peak memo for the test (the process-wide one is left as it was)."""
    monkeypatch.setattr(bench_mod, "_PEAKS", {})


@pytest.fixture
def fake_matmul(monkeypatch, fresh_peaks):
    """Replace the timed matmul by a fixed time per dtype and count its calls."""
    seconds = {torch.float32: 0.5, torch.bfloat16: 0.125, torch.float16: 0.25}
    calls = []

    def fake(device, dtype, size, repeats):
        calls.append((str(device), dtype, size, repeats))
        return seconds[dtype]

    monkeypatch.setattr(bench_mod, "_matmul_seconds", fake)
    return seconds, calls


def test_peak_is_positive_and_memoised(monkeypatch, fresh_peaks):
    real = bench_mod._matmul_seconds
    calls = []

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(bench_mod, "_matmul_seconds", counting)
    first = bench_mod.measure_peak("cpu", ("fp32", "bf16"), threads=1, size=128)
    assert set(first) == {"fp32", "bf16"} and len(calls) == 2
    for dtype, gflops in first.items():
        # bf16 may lack kernels on some CPU: then None, never a made-up figure
        assert gflops is None or gflops > 0, (dtype, gflops)
    assert first["fp32"] > 0
    second = bench_mod.measure_peak("cpu", ("fp32", "bf16"), threads=1, size=128)
    assert second == first and len(calls) == 2  # memoised: no matmul the second time
    bench_mod.measure_peak("cpu", ("fp32",), threads=1, size=96)  # another size is measured anew
    assert len(calls) == 3 and calls[-1][2] == 96


def test_peak_arithmetic_and_metadata(fake_matmul):
    seconds, calls = fake_matmul
    meta = bench_mod.peak_metadata("cpu", ("fp32", "bf16", "fp32"), threads=1, size=64, repeats=2)
    assert meta["gflops"] == {"fp32": pytest.approx(2 * 64 ** 3 / 0.5 / 1e9),
                              "bf16": pytest.approx(2 * 64 ** 3 / 0.125 / 1e9)}
    assert len(calls) == 2 and {c[2:] for c in calls} == {(64, 2)}
    assert meta["measured"] and meta["size"] == 64 and meta["repeats"] == 2 and meta["threads"] == 1
    assert "64x64" in meta["method"] and meta["errors"] == {}
    with pytest.raises(ValueError, match="precision"):
        bench_mod.measure_peak("cpu", ("int8",))


def test_failed_dtype_is_none_with_its_error(monkeypatch, fresh_peaks):
    def fails(device, dtype, size, repeats):
        if dtype is torch.float16:
            raise RuntimeError("no fp16 kernel here\nsecond line")
        return 1.0

    monkeypatch.setattr(bench_mod, "_matmul_seconds", fails)
    meta = bench_mod.peak_metadata("cpu", ("fp32", "fp16"), size=32)
    assert meta["gflops"]["fp16"] is None and meta["gflops"]["fp32"] > 0
    assert meta["errors"] == {"fp16": "RuntimeError: no fp16 kernel here"}


def test_rows_use_count_macs_latency_and_their_own_dtype_peak(fake_matmul):
    seconds, calls = fake_matmul
    res = bench_mod.bench([8], resolutions=(32,), batches=(1, 2), precisions=("fp32", "bf16"),
                          threads=1, warmup=1, repeats=2, cold_start=False)
    peaks = res["peak"]["gflops"]
    n = res["peak"]["size"]
    assert peaks["fp32"] == pytest.approx(2 * n ** 3 / seconds[torch.float32] / 1e9)
    assert peaks["bf16"] == pytest.approx(2 * n ** 3 / seconds[torch.bfloat16] / 1e9)
    assert len(calls) == 2
    assert len(res["rows"]) == 4
    for r in res["rows"]:
        assert "error" not in r, r
        assert set(bench_mod.ROW_KEYS) <= set(r)
        macs = count_macs(ArchConfig.from_width(8), 32, 32, r["batch"])
        assert r["macs"] == macs
        assert r["gflops"] == pytest.approx(2 * macs / (r["median_ms"] / 1e3) / 1e9, rel=1e-9)
        assert r["peak_gflops"] == peaks[r["precision"]]  # bf16 against bf16, fp32 against fp32
        assert r["peak_fraction"] == pytest.approx(r["gflops"] / peaks[r["precision"]], rel=1e-12)
    table = bench_mod.format_table(res)
    assert "fp32 " in table and "GFLOP/s" in table and "% of bf16 peak" in table and "% of fp32 peak" in table
    assert f"{peaks['bf16']:.1f} GFLOP/s" in table.splitlines()[1]
    json.dumps(res, allow_nan=False)
    # a second bench in the same process reuses the memoised peak
    bench_mod.bench([8], resolutions=(32,), threads=1, warmup=1, repeats=1, cold_start=False)
    assert len(calls) == 2


def test_fp16_rows_get_the_fp16_peak(fake_matmul):
    seconds, calls = fake_matmul
    res = bench_mod.bench([8], resolutions=(32,), precisions=("fp16",), threads=1, warmup=1,
                          repeats=1, cold_start=False)
    assert set(res["peak"]["gflops"]) == {"fp32", "bf16", "fp16"}
    (r,) = res["rows"]
    if "error" in r:  # no fp16 convolutions on this CPU: a row with the error, no figures
        assert "peak_fraction" not in r
    else:
        assert r["peak_gflops"] == res["peak"]["gflops"]["fp16"]
        assert r["peak_fraction"] == pytest.approx(r["gflops"] / r["peak_gflops"])


def test_no_peak_gives_na(fake_matmul, capsys):
    _, calls = fake_matmul
    res = bench_mod.bench([8], resolutions=(32,), threads=1, warmup=1, repeats=1, cold_start=False,
                          peak=False)
    assert calls == [] and res["peak"]["measured"] is False and res["settings"]["peak"] is False
    (r,) = res["rows"]
    assert r["peak_fraction"] is None and r["peak_gflops"] is None and r["gflops"] > 0
    table = bench_mod.format_table(res)
    assert "peak: n/a" in table and "n/a of fp32 peak" in table

    from dctnet_lite.cli import main

    rc = main(["bench", "--width", "8", "--resolutions", "32", "--repeats", "1", "--warmup", "1",
               "--threads", "1", "--no-cold-start", "--no-peak", "--json"])
    assert rc == 0 and calls == []
    out = json.loads(capsys.readouterr().out)
    assert out["peak"]["measured"] is False and out["rows"][0]["peak_fraction"] is None
    rc = main(["bench", "--width", "8", "--resolutions", "32", "--repeats", "1", "--warmup", "1",
               "--threads", "1", "--no-cold-start"])
    assert rc == 0 and len(calls) == 2  # without --no-peak the CLI measures fp32 and bf16
    printed = capsys.readouterr().out
    assert "peak (measured" in printed and "% of fp32 peak" in printed
