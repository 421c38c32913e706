"""Lists the functions longer than the project's limit that carry no reason.

A function (Python or C++, its signature to its closing line; a Python docstring not
counted) may be at most LIMIT lines long, unless a comment on one of the three lines above
it starts with ``length:`` and says why. C++ functions are found by their braces: a block
opened after a parameter list at file, namespace or class scope (lambdas and blocks inside
a function count as its lines).
Run as ``python tools/function_length.py [paths]``; exits 1 and lists them when any is
found. ``make lint`` and tests/test_sources.py run it.
"""

import ast
import re
import sys
from pathlib import Path

LIMIT = 60
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATHS = ["fastreg", "csrc", "bench", "tools", "setup.py"]
CPP_SUFFIXES = {".h", ".cpp", ".cu", ".cuh"}
NOT_NAMES = {"__launch_bounds__", "__attribute__", "alignas", "decltype"}  # before a name's "("
REASON = re.compile(r"^\s*(#|//)\s*length:\s*\S")


def _has_reason(lines, first):
    """A `length:` comment on one of the three lines above line `first` (0-based)."""
    return any(REASON.match(lines[i]) for i in range(max(0, first - 3), first))


def python_functions(path):
    """(name, first line, line count) of every function and method of a Python file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            doc = node.body[0]  # a docstring is documentation, not code: not counted
            doc_lines = 0
            if isinstance(doc, ast.Expr) and isinstance(getattr(doc, "value", None), ast.Constant):
                doc_lines = doc.end_lineno - doc.lineno + 1 if isinstance(doc.value.value, str) else 0
            yield node.name, first, node.end_lineno - first + 1 - doc_lines


def _strip(text):
    """The C++ source with comments, string and character literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def cpp_functions(path):
    """(name, first line, line count) of every function body at file, namespace or class
    scope of a C++ file."""
    text = _strip(path.read_text())
    # preprocessor lines (continued ones included) blanked too, newlines kept
    text = re.sub(
        r"^[ \t]*#.*?(?<!\\)$", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.M | re.S
    )
    stack = []  # per open brace: "function", "scope" or "inner"
    head_start = 0  # where the text before the next brace begins
    for i, c in enumerate(text):
        if c == "{":
            head = text[head_start:i]
            if stack and stack[-1][0] in ("function", "inner"):
                kind = "inner"
            elif ")" in head and not re.search(r"\b(struct|class|namespace|enum|union)\b[^()]*$", head):
                kind = "function"
                sig = head.strip()
                name = [w for w in re.findall(r"([~\w:]+)\s*\(", sig) if w not in NOT_NAMES]
                first = text.count("\n", 0, head_start + len(head) - len(head.lstrip()))
                stack.append(("function", name[0] if name else "?", first))
                head_start = i + 1
                continue
            else:
                kind = "scope"
            stack.append((kind, None, None))
            head_start = i + 1
        elif c == "}":
            if stack:
                kind, name, first = stack.pop()
                if kind == "function":
                    last = text.count("\n", 0, i)
                    yield name, first + 1, last - first + 1
            head_start = i + 1
        elif c == ";" and (not stack or stack[-1][0] == "scope"):
            head_start = i + 1


def long_functions(paths=None):
    """(path, name, first line, lines) of every function over LIMIT lines without a reason."""
    found = []
    for base in paths or DEFAULT_PATHS:
        base = ROOT / base
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            if path.suffix == ".py":
                functions = python_functions(path)
            elif path.suffix in CPP_SUFFIXES:
                functions = cpp_functions(path)
            else:
                continue
            lines = path.read_text().splitlines()
            for name, first, count in functions:
                if count > LIMIT and not _has_reason(lines, first - 1):
                    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    found.append((str(shown), name, first, count))
    return found


if __name__ == "__main__":
    found = long_functions(sys.argv[1:] or None)
    for path, name, first, count in found:
        print(f"{path}:{first}: {name} is {count} lines (limit {LIMIT}: split it, or say why", end="")
        print(" in a 'length:' comment above it)")
    sys.exit(1 if found else 0)
