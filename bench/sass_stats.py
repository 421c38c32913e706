"""Static SASS statistics of the built CUDA kernels: for each kernel whose
demangled name matches a pattern, the instruction count and the size of its
largest loop (the hot loop of a grid-stride kernel), optionally compared with
an earlier dump. A proxy for machines without a GPU: fewer instructions in the
loop of an arithmetic-bound kernel (Philox, transcendentals on half types)
means less issue time per element; only a GPU run says how much faster.

    pip install nvidia-cuda-cuobjdump           # cuobjdump, no CUDA toolkit needed
    python bench/sass_stats.py --dump /tmp/now.sass 'dropout_kernel<c10::BFloat16>'
    python bench/sass_stats.py --before /tmp/old.sass 'map_kernel<false, 8, c10::BFloat16'

Counts are static: a loop's count includes paths a run may not take (the
scalar tail of a vectorized loop, the other side of a branch).
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys


def cuobjdump():
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:  # the nvidia-cuda-cuobjdump wheel
        import nvidia

        for root in nvidia.__path__:
            hits = glob.glob(os.path.join(root, "*", "bin", "cuobjdump"))
            if hits:
                return hits[0]
    except ImportError:
        pass
    sys.exit("cuobjdump not found: pip install nvidia-cuda-cuobjdump")


def kernels(sass, pattern):
    """{short name: (instructions, largest loop, opcode histogram of that loop)}."""
    funcs = re.split(r"\n\s*Function : ", sass)[1:]
    names = [f.split("\n", 1)[0].strip() for f in funcs]
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = {}
    for body, name in zip(funcs, demangled.stdout.split("\n"), strict=False):
        if not re.search(pattern, name):
            continue
        ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
        ins = [(a, t) for a, t in ins if not t.startswith("NOP")]
        loop = []
        for a, t in ins:
            m = re.search(r"BRA[^0-9]*0x([0-9a-f]+)", t)
            if m and int(m.group(1), 16) < a:
                seg = [x for x in ins if int(m.group(1), 16) <= x[0] <= a]
                loop = seg if len(seg) > len(loop) else loop
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for _, t in loop)
        short = re.sub(r"\(anonymous namespace\)::|fastreg::cuda::|fastreg::|c10::|void ", "", name)
        out[re.sub(r"\(.*", "", short)] = (len(ins), len(loop), ops)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pattern", help="regular expression on the demangled kernel name")
    ap.add_argument("--so", default=None, help="the extension (default fastreg/_C*.so)")
    ap.add_argument("--before", help="an earlier `cuobjdump -sass` dump to compare with")
    ap.add_argument("--dump", help="also write this build's dump here")
    ap.add_argument("--ops", action="store_true", help="print the opcode histogram of each loop")
    args = ap.parse_args()
    so = args.so or glob.glob(os.path.join(os.path.dirname(__file__), "..", "fastreg", "_C*.so"))[0]
    sass = subprocess.run([cuobjdump(), "-sass", so], capture_output=True, text=True, check=True).stdout
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(sass)
    now = kernels(sass, args.pattern)
    before = kernels(open(args.before).read(), args.pattern) if args.before else {}
    print(f"{'kernel':80s} {'instr':>6s} {'loop':>6s}" + ("   before: instr   loop" if before else ""))
    for k in sorted(set(now) | set(before)):
        row = f"{k[:80]:80s}"
        for r in [now.get(k)] + ([before.get(k)] if before else []):
            row += f" {r[0]:6d} {r[1]:6d}" if r else f" {'-':>6s} {'-':>6s}"
        print(row)
        if args.ops and k in now:
            print("      ", dict(now[k][2].most_common(12)))


if __name__ == "__main__":
    main()
