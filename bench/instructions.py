"""Instructions executed per call, one build of fastreg against another, under callgrind.

Timing cannot resolve a few percent on a machine whose speed drifts by tens of percent
(docs/performance-log.md, "CPU timing method"); the count of instructions a call executes
does not drift. Each build runs the same calls (every public function of
fastreg.functional, forward and backward, float32 and bfloat16, small tensors) in one
process under valgrind's callgrind, one thread; a dump before and after each measured
call gives its count, the first call of each case being a warm-up. Valgrind runs the AVX2
code (it has no AVX-512), so this checks the AVX2 path; an instruction count is a proxy
for time, not a measurement of it (a vectorized loop and its scalar form differ by
several times, a different register allocation not at all).

python bench/instructions.py BASE [HEAD] [--max-ratio 1.03]

BASE and HEAD are checkouts with fastreg built in place (HEAD defaults to this one), for
example a CPU-only build of an earlier commit in a scratch worktree:
`git worktree add /tmp/base <commit> && cd /tmp/base && FASTREG_CUDA=0 python setup.py
build_ext --inplace`. Prints a table of counts and HEAD/BASE ratios; exits 1 when a ratio
exceeds --max-ratio.
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# the one-tensor activations; prelu and the rest have cases of their own
ACTIVATIONS = (
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
)


def _grad_case(cases, torch, name, make, fn):
    """A case of fn's forward and backward on the inputs make() returns."""

    def setup():
        ins = make()
        g = torch.ones_like(fn(*ins))
        return lambda: fn(*ins).backward(g)

    cases.append((name, setup))


def _plain_case(cases, name, make, fn):
    """A case of fn on fresh copies of the inputs make() returns."""

    def setup():
        ins = make()
        return lambda: fn(*[t.clone() for t in ins])

    cases.append((name, setup))


def _elementwise_cases(cases, torch, F, dt):
    d = str(dt).removeprefix("torch.")
    n = 1 << 17

    def r(*s):
        return torch.randn(*s, dtype=dt, requires_grad=True)

    def case(name, make, fn):
        _grad_case(cases, torch, f"{name} {d}", make, fn)

    for act in ACTIVATIONS:
        if hasattr(F, act):  # an earlier build may lack the newer ones
            case(act, lambda: (r(n),), getattr(F, act))
    case("prelu", lambda: (r(64, 32, 64), r(32)), F.prelu)
    case("dropout", lambda: (r(n),), lambda x: F.dropout(x, 0.1, seed=3))
    case("alpha_dropout", lambda: (r(n),), lambda x: F.alpha_dropout(x, 0.1, True, seed=3))
    for act in ("relu", "gelu"):
        # the bias along whole chunks of the last dim (the fused loop), and a narrow one
        for rows, cols in ((32, 4096), (512, 200)):
            case(
                f"bias_act_dropout {act} {rows}x{cols}",
                lambda rows=rows, cols=cols: (r(rows, cols), r(cols)),
                lambda x, b, act=act: F.bias_act_dropout(x, b, act, 0.1, seed=3),
            )
    case("dropout_add", lambda: (r(n), r(n)), lambda x, y: F.dropout_add(x, y, 0.1, seed=3))
    case("drop_path", lambda: (r(32, 4096),), lambda x: F.drop_path(x, 0.2, True, seed=3))
    if hasattr(F, "stochastic_depth"):  # an earlier build lacks it
        case(
            "stochastic_depth",
            lambda: (r(32, 4096),),
            lambda x: F.stochastic_depth(x, torch.tanh, 0.2, True, seed=3),
        )
    case(
        "dropconnect_linear",
        lambda: (r(16, 128), r(128, 128)),
        lambda x, w: F.dropconnect_linear(x, w, None, 0.1, seed=3),
    )


def _batch_cases(cases, torch, F, dt):
    d = str(dt).removeprefix("torch.")
    target = torch.randint(0, 10, (8,))

    def images():
        return (torch.randn(8, 3, 64, 64, dtype=dt),)

    def case(name, fn):
        _plain_case(cases, f"{name} {d}", images, fn)

    case("cutout", lambda x: F.cutout(x, 16, seed=3))
    case("random_erasing", lambda x: F.random_erasing(x, 1.0, seed=3))
    case("mixup", lambda x: F.mixup(x, target, num_classes=10, seed=3))
    case("mixup elem", lambda x: F.mixup(x, target, num_classes=10, mode="elem", seed=3))
    case("cutmix", lambda x: F.cutmix(x, target, num_classes=10, seed=3))


def _cases(torch, F):
    """(name, setup) pairs; setup() builds the inputs and returns the call to count."""
    cases = []
    for dt in (torch.float32, torch.bfloat16):
        _elementwise_cases(cases, torch, F, dt)
        _batch_cases(cases, torch, F, dt)
    return cases


def child(root, names_path):
    """Run every case of the build in `root`, a zlib.crc32 call on each side of the counted
    call (callgrind dumps its counts before each one)."""
    # import the build under test, not an editable install's finder pointing elsewhere
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
    sys.path.insert(0, root)
    import torch

    import fastreg
    import fastreg.functional as F

    assert os.path.dirname(os.path.dirname(os.path.abspath(fastreg.__file__))) == os.path.abspath(root), (
        fastreg.__file__
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = []
    for name, setup in _cases(torch, F):
        run = setup()
        run()
        zlib.crc32(b"")
        run()
        zlib.crc32(b"")
        names.append(name)
    with open(names_path, "w") as f:
        f.write("\n".join(names) + "\n")


def _dump_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise ValueError(f"no total in {path}")


def count(root, tmp):
    """{case: instructions} for the build in `root`."""
    out = os.path.join(tmp, "cg")
    names_path = os.path.join(tmp, "names")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-before=*zlib_crc32*",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        root,
        names_path,
    ]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(names_path) as f:
        names = [line for line in f.read().splitlines() if line]
    # dumps: 1 = import and first warm-up, then the counted call and the next warm-up
    return {name: _dump_total(f"{out}.{2 * (i + 1)}") for i, name in enumerate(names)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", nargs="?")
    ap.add_argument("head", nargs="?", default=HERE)
    ap.add_argument("--max-ratio", type=float, default=1.03)
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "NAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    if args.base is None:
        ap.error("BASE is required")
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py: valgrind is not installed")
    with tempfile.TemporaryDirectory() as tb, tempfile.TemporaryDirectory() as th:
        # the two builds side by side (counts do not depend on what else runs)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            base = pool.submit(count, os.path.abspath(args.base), tb)
            head = pool.submit(count, os.path.abspath(args.head), th)
            counts = {"base": base.result(), "head": head.result()}
    worst = 0.0
    print(f"{'case':40s} {'base':>12s} {'head':>12s} {'head/base':>9s}")
    for name, b in counts["base"].items():
        h = counts["head"].get(name)
        if h is None:
            continue
        worst = max(worst, h / b)
        print(f"{name:40s} {b:>12,} {h:>12,} {h / b:9.3f}")
    print(f"largest ratio {worst:.3f} (limit {args.max_ratio})")
    return 1 if worst > args.max_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
