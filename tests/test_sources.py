"""Properties of the C++ sources that no run on this machine can show.

On the H200 image (torch 2.11, gcc 13.3) formatting a number through an std::ostream
inside the extension crashed the process (csrc/errors.h): every message of fastreg's
checks is assembled by fastreg::detail::cat instead. This keeps new code from going
back to c10::str / TORCH_CHECK-style formatting, which the CPU-only CI cannot catch.
"""

import pathlib
import re

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
