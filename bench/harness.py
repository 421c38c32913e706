"""The benchmark harness every family uses.

It measures the device's copy bandwidth once, times each implementation of a
case (CUDA events after warm-up on a GPU; on the CPU, torch.utils.benchmark timing
the implementations in alternating batches of a few milliseconds),
and reports per op, direction, dtype and size: median time, GB/s on the byte
floor of DESIGN §5, percent of the copy bandwidth, speedups, and bytes saved
for backward per element. Results go to bench/results/<device>-<date>.json and
a PNG plot, and a table is printed.
"""

import datetime
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.utils.benchmark as tbench

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def warm_up(device, seconds=0.5):
    """Keeps a GPU busy for a while so its clocks have ramped up before the first row."""
    if torch.device(device).type != "cuda":
        return
    a = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            b.copy_(a)
        torch.cuda.synchronize()


def time_ms(fn, device, reps=None):
    """Median milliseconds of fn() after warm-up."""
    return time_calls(fn, device, reps)[0]


def time_calls(fn, device, reps=None):
    """(median ms of fn() after warm-up, host ms to issue one call or None). On a GPU the
    host time says whether the device waited for the host: when it is close to the device
    time, the row measures the host path (Python, checks, launches), not the kernels."""
    if torch.device(device).type == "cuda":
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        reps = reps or 30
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        t0 = time.perf_counter()
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        host_ms = (time.perf_counter() - t0) * 1e3 / reps
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)), host_ms
    fn()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.3).median * 1e3, None


# The variables that cap the instruction sets of the CPU code eager torch and fastreg run:
# ATen's kernels, oneDNN's JIT kernels (eager GELU), MKL's (float32 matmul), fastreg's.
CPU_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FASTREG_CPU_ISA")


def steady_cpu_allocator():
    """Makes glibc's malloc keep freed blocks of up to 32 MiB in the heap (M_MMAP_THRESHOLD)
    and never hand the heap's top back to the system (M_TRIM_THRESHOLD), so a benchmark loop
    reuses its outputs' pages instead of faulting fresh ones in. By default glibc adapts both
    thresholds as blocks come and go, and which mode a loop of 16 MiB tensors ends up in moved
    the same call between 2.4 and 6 ms (fastreg and eager alike; 12k-46k page faults a second).
    PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the same reason. Applies to
    every implementation alike; returns a description for the results, or None (not glibc)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        return None
    return "glibc mallopt M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB" if ok else None


def copy_bandwidth(device, nbytes):
    """Device-to-device copy in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / ms / 1e6, ms


def saved_bytes(fn):
    """Bytes autograd saves while running fn() (held references counted)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def device_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def device_slug(device):
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device).replace("NVIDIA", "")
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return "cpu"


@dataclass
class Case:
    """One thing to time: an op in one direction, dtype and size, several implementations."""

    family: str
    op: str
    direction: str  # "fwd" (inference forward) or "fwd+bwd" (training step of the op)
    dtype: str
    numel: int
    floor_bytes: int  # fewest bytes the op must move (DESIGN §5)
    impls: dict = field(default_factory=dict)  # name -> callable
    saved: dict = field(default_factory=dict)  # name -> callable whose autograd saves are counted
    note: str = ""


@dataclass
class Row:
    family: str
    op: str
    direction: str
    dtype: str
    numel: int
    floor_bytes: int
    times_ms: dict
    saved_bytes_per_elem: dict
    gbps: float
    pct_copy: float
    speedup: dict
    note: str = ""
    host_ms: dict = field(default_factory=dict)  # GPU: host time to issue one call, per implementation


def time_alternating(fns, seconds_each, batch_s=0.01):
    """CPU: {name: median ms per call}, the implementations' calls alternating in batches of
    about `batch_s` (fastreg, eager, compile, fastreg, ...) until each has run for about
    `seconds_each`, and at least 15 batches each. This machine's speed drifts by +-30 %
    within seconds (other tenants): per-implementation blocks of 0.3 s, even interleaved,
    left ratios that moved by as much between runs; batches of a few milliseconds expose
    every implementation to the same drift. A failing implementation maps to its exception."""
    calls, out = {}, {}
    for name, fn in fns.items():
        try:
            fn()  # warm-up (and a compile's first call)
            t0 = time.perf_counter()
            fn()
            calls[name] = max(1, round(batch_s / max(time.perf_counter() - t0, 1e-7)))
        except Exception as exc:
            out[name] = exc
    threads = torch.get_num_threads()
    timers = {n: tbench.Timer(stmt="fn()", globals={"fn": fns[n]}, num_threads=threads) for n in calls}
    samples = {name: [] for name in calls}
    deadline = time.perf_counter() + seconds_each * len(calls)
    while calls and (time.perf_counter() < deadline or min(len(v) for v in samples.values()) < 15):
        for name, number in calls.items():
            samples[name].append(timers[name].timeit(number).median * 1e3)
    out.update({name: statistics.median(v) for name, v in samples.items()})
    return out


def holding(fn):
    """fn, keeping each call's result alive until the next call has returned, as a model keeps
    a layer's output while the next layer writes its own. Without it, a loop of one op reuses
    or does not reuse the output block it just freed, at glibc's choice among the free chunks
    of the heap, and at 2^22 float32 elements (input + output = the 32 MiB L3 of this
    project's CPU) a reused block is still half in cache: the same call then ran up to 45 %
    faster, and which implementation of a row got which pattern swung the row by +-10 %
    (bench/NOTES.md, tenth session). Held, every implementation writes a block it did not
    just free."""
    held = [None]

    def run():
        result = fn()
        held[0] = result  # the previous result is released only now

    return run


def run_case(case, device, copy_gbps, rounds=1):
    """Times every implementation of a case. On a GPU: `rounds` rounds, interleaved
    (fastreg, eager, ..., fastreg, eager, ...), keeping each one's fastest median. On the
    CPU: calls alternate in batches of a few milliseconds (time_alternating) for about
    0.3 s per round and implementation, and each reports its median."""
    times, host = {}, {}
    impls = {name: holding(fn) for name, fn in case.impls.items()}
    if torch.device(device).type != "cuda":
        for name, t in time_alternating(impls, 0.3 * rounds).items():
            if isinstance(t, Exception):
                times[name] = None
                print(f"  {case.op} {case.direction} {case.dtype}: {name} failed: {type(t).__name__}: {t}")
            else:
                times[name] = t
        rounds = 0
    for _ in range(rounds):
        for name, fn in impls.items():
            if name in times and times[name] is None:
                continue
            try:
                t, host_ms = time_calls(fn, device)
                times[name] = t if name not in times else min(times[name], t)
                if host_ms is not None:
                    host[name] = host_ms
            except Exception as exc:  # a baseline that fails (e.g. compile) is reported, not fatal
                times[name] = None
                what = f"{case.op} {case.direction} {case.dtype}"
                print(f"  {what}: {name} failed: {type(exc).__name__}: {exc}")
    saved = {}
    for name, fn in case.saved.items():
        saved[name] = saved_bytes(fn) / case.numel
    ours = times.get("fastreg")
    gbps = case.floor_bytes / ours / 1e6 if ours else 0.0
    speedup = {k: (v / ours if (v and ours) else None) for k, v in times.items() if k != "fastreg"}
    return Row(
        case.family,
        case.op,
        case.direction,
        case.dtype,
        case.numel,
        case.floor_bytes,
        times,
        saved,
        gbps,
        100 * gbps / copy_gbps,
        speedup,
        case.note,
        host,
    )


def format_table(rows, copy_gbps):
    baselines = sorted({k for r in rows for k in r.speedup})
    host = any(r.host_ms for r in rows)
    head = (
        f"{'op':<22}{'dir':<8}{'dtype':<9}{'fastreg ms':>11}"
        + (f"{'host ms':>9}" if host else "")
        + f"{'GB/s':>8}{'%copy':>7}"
        + "".join(f"{'x ' + b:>12}" for b in baselines)
        + f"{'saved B/el':>22}"
    )
    lines = [f"copy bandwidth: {copy_gbps:.0f} GB/s (read + write)", head, "-" * len(head)]
    for r in rows:
        ours = r.times_ms.get("fastreg")
        sp = "".join(f"{(f'{r.speedup[b]:.2f}' if r.speedup.get(b) else '-'):>12}" for b in baselines)
        sv = " / ".join(f"{k} {v:.3g}" for k, v in r.saved_bytes_per_elem.items())
        lines.append(
            f"{r.op:<22}{r.direction:<8}{r.dtype:<9}{(f'{ours:.4f}' if ours else '-'):>11}"
            + (f"{r.host_ms.get('fastreg', 0):>9.4f}" if host else "")
            + f"{r.gbps:>8.0f}{r.pct_copy:>7.1f}{sp}  {sv}"
        )
    return "\n".join(lines)


def plot(rows, path, title, copy_gbps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.op} {r.direction} {r.dtype}" for r in rows]
    impls = sorted({k for r in rows for k, v in r.times_ms.items() if v})
    impls.sort(key=lambda k: (k != "fastreg", k))
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(rows)), 5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        vals = [
            100 * r.floor_bytes / r.times_ms[impl] / 1e6 / copy_gbps if r.times_ms.get(impl) else 0
            for r in rows
        ]
        ax.bar([i + j * width for i in range(len(rows))], vals, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("% of copy bandwidth (byte floor / time)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows, device, copy_gbps, copy_ms, copy_bytes, out_dir=None, extra=None, tag=""):
    out_dir = out_dir or RESULTS
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    base = os.path.join(out_dir, f"{device_slug(device)}-{stamp}" + (f"-{tag}" if tag else ""))
    info = {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "copy": {"bytes": copy_bytes, "ms": copy_ms, "gbps": copy_gbps},
        # the instruction set of eager torch's CPU kernels (ATEN_CPU_CAPABILITY caps it; fastreg's
        # own is build_info()'s cpu_isa, capped by FASTREG_CPU_ISA)
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # oneDNN's JIT kernels (eager GELU on the CPU) pick their own instruction set, capped
        # only by ONEDNN_MAX_CPU_ISA; MKL's (float32 matmul) by MKL_ENABLE_INSTRUCTIONS
        "cpu_isa_env": {k: os.environ.get(k) for k in CPU_ISA_ENV},
    }
    try:
        import fastreg

        info["fastreg"] = fastreg.build_info()
    except ImportError:
        pass
    info.update(extra or {})
    with open(base + ".json", "w") as f:
        json.dump({"info": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    plot(rows, base + ".png", f"fastreg on {info['device']} ({stamp})", copy_gbps)
    return base
