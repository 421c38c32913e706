"""The benchmark's instruction-set cap (not its timings: benchmarks are scripts).

`bench/run.py --cpu-isa avx2` must reach every library that picks its CPU code at run
time: ATen's kernels, the oneDNN kernels eager GELU runs on (ATEN_CPU_CAPABILITY does not
cap those; the twelfth and thirteenth sessions' AVX2 tables timed fastreg's AVX2 GELU
against oneDNN's AVX-512 code), MKL, and fastreg's own loops.
"""

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
    (result,) = tmp_path.glob("*.json")
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
