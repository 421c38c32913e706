"""The package itself: `python -m fastreg` and the message of an import without the
extension."""

import os
import shutil
import subprocess
import sys

import torch

import fastreg

ops = torch.ops.fastreg


def test_python_m_fastreg_prints_build_info():
    out = subprocess.run([sys.executable, "-m", "fastreg"], capture_output=True, text=True, check=True).stdout
    info = fastreg.build_info()
    assert f"with_cuda       {info['with_cuda']}" in out
    assert info["version"] in out and "torch" in out
    assert ("cuda:0" in out) == torch.cuda.is_available()


def test_import_without_extension_says_how_to_build(tmp_path):
    pkg = tmp_path / "fastreg"
    pkg.mkdir()
    src = os.path.dirname(fastreg.__file__)
    for f in os.listdir(src):
        if f.endswith(".py"):
            shutil.copy(os.path.join(src, f), pkg / f)
    # an editable install's finder would still resolve fastreg._C: drop it
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
        " if '__editable__' not in getattr(f, '__module__', '')]; import fastreg"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "make build" in res.stderr
