"""Properties of the C++ sources that no run on this machine can show.

On the H200 image (torch 2.11, gcc 13.3) formatting a number through an std::ostream
inside the extension crashed the process (csrc/errors.h): every message of fastreg's
checks is assembled by fastreg::detail::cat instead. This keeps new code from going
back to c10::str / TORCH_CHECK-style formatting, which the CPU-only CI cannot catch.
"""

import pathlib
import re
import subprocess
import sys

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"

# the three throw helpers pass one ready std::string (no formatting)
ALLOWED = {
    "void throw_type_error(const std::string& msg) { TORCH_CHECK_TYPE(false, msg); }",
    "void throw_value_error(const std::string& msg) { TORCH_CHECK_VALUE(false, msg); }",
    "void throw_runtime_error(const std::string& msg) { TORCH_CHECK(false, msg); }",
}
STREAMING = re.compile(
    r"\bc10::str\s*\(|stringstream|std::ostream|std::cout|std::cerr|\bTORCH_CHECK\w*\s*\("
    r"|\bAT_ERROR\s*\(|\bTORCH_WARN\w*\s*\(|\bTORCH_INTERNAL_ASSERT\w*\s*\("
)


def test_no_iostream_formatting_in_the_extension():
    sources = [p for p in CSRC.rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]
    assert len(sources) >= 10
    found = []
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0]
            if STREAMING.search(code) and line.strip() not in ALLOWED:
                found.append(f"{path.relative_to(CSRC)}:{number}: {line.strip()}")
    assert not found, "format messages with FASTREG_CHECK* (errors.h):\n" + "\n".join(found)


def test_the_checks_format_through_cat():
    errors_h = (CSRC / "errors.h").read_text()
    assert "thrower(::fastreg::detail::cat(__VA_ARGS__))" in errors_h


ROOT = CSRC.parent
# Words by which a project narrates its own making: numbered work periods and runs, issue
# numbers, and references to files outside the repository. Dates and commit hashes say when.
NARRATION = re.compile(
    r"\bsessions?\b"
    r"|\b(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth"
    r"|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth)\s+(?:run|sitting|stretch)\b"
    r"|\bruns? \d+(?:\s*(?:[-–,]|and)\s*\d+)*\b"
    r"(?! (?:ms|us|µs|s|times|elements|rounds|processes|calls|cases|bits))"
    r"|\b(?:issue|issues|ticket|task) #?\d+\b"
    r"|(?-i:\bDESIGN\b)|\bBUILD\.md\b|\bSTYLE\.md\b|\.\./shared\b",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {
    ".py",
    ".h",
    ".cpp",
    ".cu",
    ".cuh",
    ".md",
    ".sh",
    ".toml",
    ".txt",
    ".cfg",
    ".csv",
    ".in",
    ".rst",
}


def project_files():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        names = tracked.stdout.split()
    else:  # a copy of the tree without git (an sdist): every file under the root
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    skip = (".venv/", "build/", ".git/")
    return [
        ROOT / n
        for n in names
        if (pathlib.Path(n).suffix in TEXT_SUFFIXES or pathlib.Path(n).name in ("Makefile", "LICENSE", "run"))
        and not n.startswith(skip)
        and (ROOT / n).exists()
    ]


def test_the_project_does_not_narrate_its_making():
    files = project_files()
    assert len(files) >= 40
    found = []
    for path in files:
        if path.name == "test_sources.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = NARRATION.search(line)
            if m:
                found.append(f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r}: {line.strip()[:120]}")
    assert not found, f"{len(found)} lines narrate (dates and commits say when):\n" + "\n".join(found[:80])


def test_the_narration_words_are_caught():
    for line in (
        "the thirteenth session's AVX2 work",
        "(run 5: 11)",
        "runs 2-3 agree",
        "issue 22 says",
        "see DESIGN §4",
        "../shared/BUILD.md",
        "fixed in issue #123",
    ):
        assert NARRATION.search(line), line
    for line in ("2 runs of 5 processes", "an unused stream id", "runs 3 rounds", "#include <cmath>"):
        assert not NARRATION.search(line), line


def test_every_public_function_and_class_is_documented_and_typed():
    """help() is enough to use each one: a docstring with its arguments, what it saves for
    backward and an example, and type hints on every argument and return."""
    import inspect

    import fastreg
    import fastreg.functional as FR
    import fastreg.nn as FN

    missing = []
    for name in FR.__all__:
        fn = getattr(FR, name)
        doc = inspect.getdoc(fn) or ""
        sig = inspect.signature(fn)
        for part in ("Args:", "Returns:", "Saved for backward", "Example:"):
            if part not in doc:
                missing.append(f"functional.{name}: no {part!r}")
        for p in sig.parameters.values():
            if p.annotation is inspect.Parameter.empty:
                missing.append(f"functional.{name}: argument {p.name} has no type hint")
            if p.name not in doc:
                missing.append(f"functional.{name}: argument {p.name} is not described")
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"functional.{name}: no return type")
    for name in FN.__all__:
        cls = getattr(FN, name)
        doc = cls.__doc__ or ""
        if "Example:" not in doc:
            missing.append(f"nn.{name}: no docstring with an example")
        forward = inspect.signature(cls.forward)
        if forward.return_annotation is inspect.Signature.empty:
            missing.append(f"nn.{name}.forward: no return type")
        if cls.__init__ is not object.__init__ and "__init__" in cls.__dict__:
            for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
                if p.annotation is inspect.Parameter.empty:
                    missing.append(f"nn.{name}: argument {p.name} has no type hint")
    if "Example:" not in (fastreg.convert.__doc__ or ""):
        missing.append("convert: no example")
    assert not missing, "\n".join(missing)


def _function_length():
    sys.path.insert(0, str(CSRC.parent / "tools"))
    try:
        import function_length
    finally:
        sys.path.pop(0)
    return function_length


def test_no_function_is_longer_than_the_limit_without_a_reason():
    """Every Python and C++ function of the library, its benchmarks and tools is at most
    60 lines long (a Python docstring not counted), or says why beside it (tools/function_length.py)."""
    assert _function_length().long_functions() == []


def test_the_length_check_finds_long_functions(tmp_path):
    """The check counts a function from its signature to its closing line, finds C++
    functions at file, namespace and class scope by their braces (not inner blocks, braces in
    strings or comments, or macros), skips a Python docstring, and accepts a `length:` reason."""
    fl = _function_length()
    body = "".join('    if (x) { y("}"); }  // {\n' for _ in range(60))
    (tmp_path / "a.cpp").write_text(
        "#define M(a) \\\n  a\nnamespace n {\n"
        f"void short_one() {{\n{body[: body.index(chr(10)) + 1]}}}\n"
        f"struct S {{\n  void long_one() {{\n{body}  }}\n}};\n"
        f"// length: a table\nvoid with_reason() {{\n{body}}}\n}}\n"
    )
    lines = "".join(f"    x{i} = {i}\n" for i in range(59))
    doc = '    """' + "\n" * 10 + '    """\n'
    (tmp_path / "b.py").write_text(
        f"def fits():\n{doc}{lines}\n\ndef too_long():\n{lines}    x = 1\n    return x\n"
    )
    found = fl.long_functions([str(tmp_path)])
    assert [(pathlib.Path(p).name, name, first, n) for p, name, first, n in found] == [
        ("a.cpp", "long_one", 8, 62),
        ("b.py", "too_long", 74, 62),
    ]
