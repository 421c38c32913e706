"""The benchmark harness every family uses.

It measures the device's copy bandwidth once, times each implementation of a
case (CUDA events after warm-up on a GPU; on the CPU, torch.utils.benchmark timing
the implementations in alternating batches of a few milliseconds),
and reports per op, direction, dtype and size: median time, GB/s on the op's byte
floor (docs/benchmarks.md), percent of the copy bandwidth, speedups, and bytes saved
for backward per element. Results go to bench/results/latest/<device>.json and .png
(replaced, case by case, by each run) and are appended to bench/results/history.csv.
"""

import csv
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
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
    """The device kind a result file is named after: cuda-<model>, cpu, or cpu-<isa> when
    the run capped the instruction sets (bench/run.py --cpu-isa)."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device).replace("NVIDIA", "")
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    cap = os.environ.get("FASTREG_CPU_ISA")
    return f"cpu-{cap}" if cap else "cpu"


def last_level_cache_bytes(default=32 << 20):
    """The CPU's largest cache (Linux's sysfs, cpu0), or `default` where it cannot be read."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best or default


def default_numel(device, dtype):
    """Elements per tensor: 2^26 on a GPU (several times its L2); on the CPU the smallest
    power of two whose tensors are at least 4x the last-level cache, so that no ceiling or
    row is a cache figure (2^22 float32 elements, half of a 32 MiB L3, read a 129 GB/s
    "copy" where the memory gives 25-49)."""
    if torch.device(device).type == "cuda":
        return 1 << 26
    elem = torch.tensor([], dtype=dtype).element_size()
    return max(1 << 22, 1 << math.ceil(math.log2(4 * last_level_cache_bytes() / elem)))


def copy_bytes_for(device):
    """Bytes copied to measure the copy ceiling: 512 MiB on a GPU, 4x the LLC on the CPU."""
    if torch.device(device).type == "cuda":
        return 1 << 29
    return 1 << math.ceil(math.log2(4 * last_level_cache_bytes()))


def current_commit():
    """The commit measured: FASTREG_COMMIT, else git's HEAD (with -dirty for local changes),
    else 'unknown' (a copy of the tree without its history, as a device machine may have)."""
    if os.environ.get("FASTREG_COMMIT"):
        return os.environ["FASTREG_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


@dataclass
class Case:
    """One thing to time: an op in one direction, dtype and size, several implementations."""

    family: str
    op: str
    direction: str  # "fwd" (inference forward) or "fwd+bwd" (training step of the op)
    dtype: str
    numel: int
    floor_bytes: int  # fewest bytes the op must move (docs/benchmarks.md)
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
    (docs/performance-log.md, "CPU timing method"). Held, every implementation writes a block it did not
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


def summary(rows):
    """The short table `make bench` prints: per family and dtype, the geometric mean of
    fastreg's speedup over each peer, the slowest case against eager, and fastreg's median
    % of the copy bandwidth."""
    groups = {}
    for r in rows:
        groups.setdefault((r.family, r.dtype), []).append(r)
    peers = [p for p in PEERS if any(r.speedup.get(p) for r in rows)]
    head = f"{'family':<12}{'dtype':<10}{'cases':>6}" + "".join(f"{'x ' + p:>14}" for p in peers)
    head += f"{'slowest x eager':>34}{'%copy':>8}"
    lines = [head, "-" * len(head)]
    for (fam, dt), rs in sorted(groups.items()):
        cells = ""
        for p in peers:
            v = [r.speedup[p] for r in rs if r.speedup.get(p)]
            cells += f"{math.exp(sum(map(math.log, v)) / len(v)):>14.2f}" if v else f"{'-':>14}"
        slow = min((r for r in rs if r.speedup.get("eager")), key=lambda r: r.speedup["eager"], default=None)
        slowest = f"{slow.speedup['eager']:.2f} ({slow.op} {slow.direction})" if slow else "-"
        pct = statistics.median(r.pct_copy for r in rs)
        lines.append(f"{fam:<12}{dt:<10}{len(rs):>6}{cells}{slowest:>34}{pct:>8.0f}")
    return "\n".join(lines)


PEERS = ("eager", "compile", "timm", "torchvision", "nn.Linear")
PEER_LABELS = {
    "eager": "torch eager",
    "compile": "torch.compile",
    "timm": "timm",
    "torchvision": "torchvision v2",
    "nn.Linear": "nn.Linear",
}


def _row_dict(row):
    return row if isinstance(row, dict) else asdict(row)


def plot(rows, path, title):
    """Two panels, one line per case, grouped by family: fastreg's speedup over each peer
    (log scale, 1 marked) and the % of the copy bandwidth fastreg and torch eager reach on
    the case's byte floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [_row_dict(r) for r in rows]
    rows.sort(key=lambda r: (r["family"], r["op"], r["direction"], r["dtype"]))
    labels = [f"{r['op']} {r['direction']} {r['dtype']}" for r in rows]
    peers = [p for p in PEERS if any((r["speedup"] or {}).get(p) for r in rows)]
    n = len(rows)
    fig, (left, right) = plt.subplots(
        1, 2, sharey=True, figsize=(13, 1.6 + 0.24 * n), gridspec_kw={"width_ratios": [3, 2]}
    )
    ys = list(range(n))
    colors = {p: f"C{j}" for j, p in enumerate(peers)}
    for y, r in zip(ys, rows, strict=True):  # a case's peers share its line
        present = [p for p in peers if (r["speedup"] or {}).get(p)]
        height = 0.8 / max(1, len(present))
        for j, peer in enumerate(present):
            left.barh(y - 0.4 + (j + 0.5) * height, r["speedup"][peer], height, color=colors[peer])
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[p], label=PEER_LABELS[p]) for p in peers]
    left.set_xscale("log")
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_xlabel("fastreg speedup (x), log scale: right of 1 is faster")
    left.legend(handles=handles, loc="lower right", fontsize=8)
    left.grid(axis="x", which="both", alpha=0.3)
    for impl, style in (("fastreg", {"color": "tab:blue"}), ("eager", {"color": "tab:gray", "alpha": 0.6})):
        vals = []
        for r in rows:
            t = r["times_ms"].get(impl)
            vals.append(
                100 * r["floor_bytes"] / t / 1e6 / r["copy_gbps"]
                if t and r.get("copy_gbps")
                else float("nan")
            )
        right.barh([y + (0.2 if impl == "fastreg" else -0.2) for y in ys], vals, 0.4, label=impl, **style)
    right.axvline(100.0, color="black", linewidth=0.8)
    right.set_xlabel("% of copy bandwidth on the byte floor")
    right.legend(loc="lower right", fontsize=8)
    right.grid(axis="x", alpha=0.3)
    left.set_yticks(ys)
    left.set_yticklabels(labels, fontsize=8)
    left.invert_yaxis()
    families = [r["family"] for r in rows]
    for y in range(1, n):
        if families[y] != families[y - 1]:
            for ax in (left, right):
                ax.axhline(y - 0.5, color="black", linewidth=0.6)
    fig.suptitle(title, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


HISTORY_FIELDS = [
    "date", "commit", "device", "device_name", "torch", "family", "op", "direction", "dtype", "numel",
    "fastreg_ms", "gbps", "pct_copy", "copy_gbps",
] + [f"x_{p}" for p in PEERS] + ["saved_fastreg", "saved_eager", "note"]  # fmt: skip


def history_row(row, date, commit, device, device_name, torch_version):
    """One history.csv line of a result row (a Row or its dict)."""
    r = _row_dict(row)
    out = {
        "date": date,
        "commit": commit,
        "device": device,
        "device_name": device_name,
        "torch": torch_version,
        "family": r["family"],
        "op": r["op"],
        "direction": r["direction"],
        "dtype": r["dtype"],
        "numel": r["numel"],
        "fastreg_ms": _num(r["times_ms"].get("fastreg")),
        "gbps": _num(r.get("gbps")),
        "pct_copy": _num(r.get("pct_copy")),
        "copy_gbps": _num(r.get("copy_gbps")),
        "saved_fastreg": _num((r.get("saved_bytes_per_elem") or {}).get("fastreg")),
        "saved_eager": _num((r.get("saved_bytes_per_elem") or {}).get("eager")),
        "note": r.get("note", ""),
    }
    for p in PEERS:
        out[f"x_{p}"] = _num((r.get("speedup") or {}).get(p))
    return out


def _num(v):
    return "" if v is None else f"{v:.6g}"


def append_history(path, lines):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        if new:
            w.writeheader()
        w.writerows(lines)


def write_results(rows, device, copy_gbps, copy_ms, copy_bytes, out_dir=None, extra=None):
    """Writes the run into `out_dir` (bench/results): latest/<device>.json and .png keep the
    newest result of every case run on this device kind (this run's rows replace the same
    cases', the others stay), and history.csv gets a line per row. Returns the paths."""
    out_dir = out_dir or RESULTS
    latest_dir = os.path.join(out_dir, "latest")
    os.makedirs(latest_dir, exist_ok=True)
    now = datetime.datetime.now()
    date, commit, slug = now.strftime("%Y-%m-%d"), current_commit(), device_slug(device)
    info = {
        "device": device_name(device),
        "device_kind": slug,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": now.isoformat(timespec="seconds"),
        "commit": commit,
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
    new_rows = [dict(asdict(r), date=date, commit=commit, copy_gbps=copy_gbps) for r in rows]
    base = os.path.join(latest_dir, slug)
    kept = []
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        fresh = {(r["family"], r["op"], r["direction"], r["dtype"]) for r in new_rows}
        kept = [r for r in old["rows"] if (r["family"], r["op"], r["direction"], r["dtype"]) not in fresh]
    merged = kept + new_rows
    with open(base + ".json", "w") as f:
        json.dump({"info": info, "rows": merged}, f, indent=1)
    plot(merged, base + ".png", f"fastreg on {info['device']} ({slug}), newest result of each case, {date}")
    history = os.path.join(out_dir, "history.csv")
    append_history(
        history, [history_row(r, date, commit, slug, info["device"], torch.__version__) for r in rows]
    )
    return {"json": base + ".json", "png": base + ".png", "history": history}
