"""`make bench`: every family's benchmark on the default device: a short table, and the
results in bench/results/latest/<device>.json and .png and bench/results/history.csv.

python bench/run.py [--device cuda] [--numel N] [--dtypes float32,bfloat16]
                    [--compile-ops relu,gelu] [--out DIR] [--cpu-isa avx2] [--full-table]
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the bench modules, and fastreg built in place

import bench_activations  # noqa: E402
import bench_batch  # noqa: E402
import bench_dropout  # noqa: E402
import harness  # noqa: E402

FAMILIES = {"activations": bench_activations, "dropout": bench_dropout, "batch": bench_batch}

# What --cpu-isa caps, in each library eager torch and fastreg run on the CPU: ATen's own
# kernels (ATEN_CPU_CAPABILITY), oneDNN's JIT kernels (ONEDNN_MAX_CPU_ISA: eager torch's
# float32 and bfloat16 GELU, forward and backward, run there, and ATEN_CPU_CAPABILITY does not
# reach them), MKL's (MKL_ENABLE_INSTRUCTIONS: float32 matmul) and fastreg's
# (FASTREG_CPU_ISA). Each is read when its library loads or first runs, so the cap is applied
# by running the script again with them set.
CPU_ISA_CAPS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FASTREG_CPU_ISA": "avx2",
    },
}


def cap_cpu_isa(isa):
    """Re-executes this script with every library capped to `isa` (CPU_ISA_CAPS), unless the
    environment already holds those caps; returns the caps in force."""
    caps = CPU_ISA_CAPS[isa]
    if any(os.environ.get(k) != v for k, v in caps.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **caps})
    return caps


def parse_args():
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--numel",
        type=int,
        default=None,
        help="elements per tensor (default: GPU 2^26; CPU: tensors of at least 4x the last-level cache)",
    )
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--ops", default="", help="only these ops (comma-separated)")
    p.add_argument(
        "--compile-ops",
        default="relu,gelu,bias_relu_dropout,bias_gelu_dropout,dropout_add",
        help="ops also timed under torch.compile ('all', 'none', or a list); each costs a compile",
    )
    p.add_argument("--compile-dtypes", default="all", help="dtypes also timed under torch.compile")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--full-table", action="store_true", help="print every case, not the summary")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="GPU: interleaved rounds, fastest kept (1); CPU: 0.3 s of alternating batches per round (3)",
    )
    p.add_argument(
        "--cpu-isa",
        choices=sorted(CPU_ISA_CAPS),
        default=None,
        help="CPU: cap eager torch (ATen, oneDNN, MKL) and fastreg to this instruction set, "
        "to time the code a CPU without AVX-512 runs",
    )
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="CPU: keep glibc's adaptive malloc thresholds (page faults make timings bimodal)",
    )
    return p.parse_args()


def run_families(args, device, dtypes, numels, copy_gbps, rounds):
    """Times every case of the families, ops and dtypes asked for; returns the result rows."""
    rows = []
    for fam in args.families.split(","):
        module = FAMILIES[fam]
        everything = args.compile_ops == "all"
        compile_ops = set() if args.compile_ops == "none" else set(args.compile_ops.split(","))
        for dtype in dtypes:
            for case in module.cases(
                device, [dtype], numels[dtype], compile_ops if not everything else _All()
            ):
                if args.ops and case.op not in args.ops.split(","):
                    continue
                if args.compile_dtypes != "all" and case.dtype not in args.compile_dtypes.split(","):
                    case.impls.pop("compile", None)
                rows.append(harness.run_case(case, device, copy_gbps, rounds))
                print(harness.format_table(rows[-1:], copy_gbps).splitlines()[-1], flush=True)
    return rows


def main():
    args = parse_args()
    caps = cap_cpu_isa(args.cpu_isa) if args.cpu_isa else None
    if not caps and any(os.environ.get(k) for k in harness.CPU_ISA_ENV):
        print(
            "note: only some CPU instruction-set caps are set "
            f"({', '.join(f'{k}={os.environ.get(k)}' for k in harness.CPU_ISA_ENV)}); "
            "--cpu-isa sets all of them (ATEN_CPU_CAPABILITY does not cap eager GELU's oneDNN kernels)"
        )

    device = args.device
    on_gpu = torch.device(device).type == "cuda"
    malloc = None if on_gpu or args.system_malloc else harness.steady_cpu_allocator()
    rounds = args.rounds or (1 if on_gpu else 3)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    numels = {d: args.numel or harness.default_numel(device, d) for d in dtypes}
    copy_bytes = harness.copy_bytes_for(device)
    harness.warm_up(device)
    copy_gbps, copy_ms = harness.copy_bandwidth(device, copy_bytes)
    sizes = ", ".join(f"{str(d).replace('torch.', '')} {n}" for d, n in numels.items())
    print(f"device {harness.device_name(device)}, elements per tensor: {sizes}")
    print(f"copy bandwidth {copy_gbps:.0f} GB/s (read + write, {copy_bytes >> 20} MiB)")

    rows = run_families(args, device, dtypes, numels, copy_gbps, rounds)
    paths = harness.write_results(
        rows,
        device,
        copy_gbps,
        copy_ms,
        copy_bytes,
        args.out,
        {"numel": {str(d).replace("torch.", ""): n for d, n in numels.items()}, "malloc": malloc},
    )
    print()
    print(harness.format_table(rows, copy_gbps) if args.full_table else harness.summary(rows))
    print(
        f"\nresults: {paths['json']} (every case), {paths['png']} (figure); "
        f"{len(rows)} lines added to {paths['history']}"
    )


class _All:
    def __contains__(self, item):
        return True


if __name__ == "__main__":
    main()
