"""The benchmark scripts' machinery (not their timings: benchmarks are scripts).

`bench/run.py --cpu-isa avx2` must reach every library that picks its CPU code at run
time: ATen's kernels, the oneDNN kernels eager GELU runs on (ATEN_CPU_CAPABILITY does not
cap those: without it, fastreg's AVX2 GELU was timed against oneDNN's AVX-512 code),
MKL, and fastreg's own loops. `bench/instructions.py` must count a call of every public
function.
"""

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import fastreg

ROOT = pathlib.Path(__file__).resolve().parent.parent


sys.path.insert(0, str(ROOT / "bench"))  # run.py imports its sibling modules
_spec = importlib.util.spec_from_file_location("fastreg_bench_run", ROOT / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
harness = bench_run.harness  # the module run.py itself uses


def test_every_cpu_isa_variable_is_capped():
    assert set(bench_run.CPU_ISA_CAPS["avx2"]) == set(harness.CPU_ISA_ENV)


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512")
    or fastreg.build_info()["cpu_isa"] == "portable",
    reason="the CPU has no AVX2",
)
def test_cpu_isa_cap_reaches_every_library(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in harness.CPU_ISA_ENV}
    env["ONEDNN_VERBOSE"] = "1"  # oneDNN prints the instruction set it dispatches to
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--cpu-isa", "avx2",
         "--families", "activations", "--ops", "gelu", "--dtypes", "float32", "--numel", "4096",
         "--rounds", "1", "--compile-ops", "none", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = tmp_path / "latest" / "cpu-avx2.json"
    info = json.loads(result.read_text())["info"]
    assert info["cpu_isa_env"] == bench_run.CPU_ISA_CAPS["avx2"]
    assert info["aten_cpu_capability"] == "AVX2"
    assert info["fastreg"]["cpu_isa"] == "avx2"
    assert {r["op"] for r in json.loads(result.read_text())["rows"]} == {"gelu"}
    # eager GELU ran oneDNN's kernels, and they were capped too
    onednn = [line for line in res.stdout.splitlines() if line.startswith("onednn_verbose")]
    assert any("isa:Intel AVX2" in line for line in onednn), res.stdout[-3000:]
    assert any(",exec,cpu,eltwise," in line for line in onednn), res.stdout[-3000:]
    assert not any("avx512" in line for line in onednn if ",exec," in line)


def _bench(out, *args):
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--families", "activations",
         "--dtypes", "float32", "--numel", "4096", "--rounds", "1", "--compile-ops", "none",
         "--out", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_results_latest_per_case_and_history(tmp_path):
    """latest/<device>.json keeps the newest result of every case (a run replaces only the
    cases it ran), history.csv gets one line per case and run, and the run prints a short
    summary and where the files went."""
    first = _bench(tmp_path, "--ops", "relu,sigmoid")
    second = _bench(tmp_path, "--ops", "sigmoid")
    latest = json.loads((tmp_path / "latest" / "cpu.json").read_text())
    cases = sorted((r["op"], r["direction"]) for r in latest["rows"])
    assert cases == [("relu", "fwd"), ("relu", "fwd+bwd"), ("sigmoid", "fwd"), ("sigmoid", "fwd+bwd")]
    assert all(r["date"] and r["commit"] and r["copy_gbps"] > 0 for r in latest["rows"])
    assert (tmp_path / "latest" / "cpu.png").stat().st_size > 10_000
    with open(tmp_path / "history.csv") as f:
        lines = list(csv.DictReader(f))
    assert sorted((r["op"], r["direction"]) for r in lines[:4]) == cases
    assert sorted((r["op"], r["direction"]) for r in lines[4:]) == [
        ("sigmoid", "fwd"),
        ("sigmoid", "fwd+bwd"),
    ]
    assert all(float(r["fastreg_ms"]) > 0 and float(r["x_eager"]) > 0 and r["device"] == "cpu" for r in lines)
    for out in (first, second):
        assert "slowest x eager" in out and "lines added to" in out
    assert len(second.splitlines()) < 12  # the summary, not a line per case


def test_cpu_tensors_are_four_times_the_last_level_cache():
    llc = harness.last_level_cache_bytes()
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        n = harness.default_numel("cpu", dtype)
        assert n * dtype.itemsize >= 4 * llc and n * dtype.itemsize < 8 * llc or n == 1 << 22
    assert harness.copy_bytes_for("cpu") >= 4 * llc


def test_instruction_counts_cover_every_public_function():
    """bench/instructions.py's cases call every public function of fastreg.functional
    and name each case once."""
    import types

    import instructions

    import fastreg.functional as F

    calls = dict.fromkeys(F.__all__, 0)

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return getattr(F, name)(*args, **kwargs)

        return call

    counted = types.SimpleNamespace(**{name: counting(name) for name in F.__all__})
    cases = instructions._cases(torch, counted)
    assert len({name for name, _ in cases}) == len(cases)
    for _, setup in cases:
        setup()()
    assert [name for name, n in calls.items() if n == 0] == []


def _train_step_and_vit(rate, depth):
    """bench/train_step.py as a module, and a small timm ViT with that drop path rate."""
    timm = pytest.importorskip("timm")
    spec = importlib.util.spec_from_file_location(
        "fastreg_bench_train_step", ROOT / "bench" / "train_step.py"
    )
    train_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_step)
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=3, drop_path_rate=rate, img_size=32, depth=depth
    )
    return train_step, model


def test_train_step_bound_and_mean_drop_prob():
    """bench/train_step.py: timm's linear schedule gives mean drop probability rate / 2; the
    bound is step / (step - sum p * branch time), 1 / (1 - mean p) when the step is all
    branches of equal cost; every residual branch of every block is timed."""
    train_step, model = _train_step_and_vit(rate=0.3, depth=4)
    p_mean = train_step.mean_drop_prob(model)
    assert p_mean == pytest.approx(0.15)
    times = train_step.branch_ms(model.train(), torch.randn(2, 3, 32, 32), "cpu", reps=1)
    assert list(times) == [f"blocks.{i}" for i in range(4)]
    assert all(len(ms) == 2 and min(ms) > 0 for ms in times.values())
    assert all(p.grad is None for p in model.parameters())
    unit = {name: [1.0, 1.0] for name in times}
    assert train_step.bound(8.0, model, unit) == pytest.approx(1 / (1 - p_mean))
    assert train_step.bound(16.0, model, unit) == pytest.approx(16 / (16 - 8 * p_mean))
    fastreg.convert(model, stochastic_depth="skip")  # rewired blocks have the same branches
    assert train_step.mean_drop_prob(model) == pytest.approx(p_mean)


def test_train_step_torch_subset_variant_runs_plain_torch(monkeypatch):
    """The peer variant's rewired blocks draw with torch.randperm, not fastreg's subset op."""
    train_step, model = _train_step_and_vit(rate=0.5, depth=2)
    fastreg.convert(model, stochastic_depth="skip").train()
    calls = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(a) or randperm(*a, **k))
    x = torch.randn(4, 3, 32, 32)
    with train_step.subset_function("torch_subset"):
        model(x)
    assert len(calls) == 2  # block 1's two branches (block 0 has p = 0)
    calls.clear()
    with train_step.subset_function("skip"):
        model(x)
    assert calls == []
