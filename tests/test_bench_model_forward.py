"""bench/model_forward.py --released: finding the released code, stubbing its unused imports.

The full-size comparison itself takes a minute on 2 CPUs and needs the authors' repository, so
it is not run here; these tests drive its plumbing on a fake released tree whose files import
exactly what the released ones do at module level (mmcv, mmseg, requests).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_FILES = {
    "lib/__init__.py": "",
    "lib/mmcv_custom/__init__.py": "from .checkpoint import load_checkpoint\n",
    "lib/mmcv_custom/checkpoint.py": (
        "import mmcv\n"
        "from mmcv.fileio import FileClient\n"
        "from mmcv.fileio import load as load_file\n"
        "from mmcv.parallel import is_module_wrapper\n"
        "from mmcv.utils import mkdir_or_exist\n"
        "from mmcv.runner import get_dist_info\n"
        "def load_checkpoint(*a, **k):\n"
        "    return FileClient()\n"
    ),
    "lib/segmentation.py": (
        "from .mmcv_custom import load_checkpoint\n"
        "from mmseg.utils import get_root_logger\n"
        "from bert.modeling_bert import BertModel\n"
        "def lavt_one(pretrained='', args=None):\n"
        "    print('Window size 12!')\n"
        "    return {'args': args, 'bert': BertModel.from_pretrained(args.ck_bert)}\n"
    ),
    "bert/__init__.py": "",
    "bert/file_utils.py": "import requests\n",
    "bert/configuration_bert.py": "class BertConfig:\n    hidden_size = 768\n",
    "bert/modeling_bert.py": (
        "from .file_utils import requests\n"
        "class PreTrainedModel:\n"
        "    @classmethod\n"
        "    def from_pretrained(cls, name):\n"
        "        raise OSError('would download ' + name)\n"
        "class BertModel(PreTrainedModel):\n"
        "    def __init__(self, config):\n"
        "        self.config = config\n"
    ),
}


@pytest.fixture
def bench():
    path = REPO / "bench" / "model_forward.py"
    spec = importlib.util.spec_from_file_location("model_forward_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    root = tmp_path / "FIANet"
    for name, text in FAKE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def clean_modules():
    """The fake released packages are named ``lib`` and ``bert``: never leave them imported."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("lib", "bert"):
            del sys.modules[name]


def _git(*args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


def test_checkout_is_used_in_place(bench, fake_tree: Path, tmp_path: Path) -> None:
    tree, commit = bench._released_tree(str(fake_tree), str(tmp_path / "scratch"))
    assert tree == fake_tree.resolve() and commit == "?"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bare_git_dir_is_extracted(bench, fake_tree: Path, tmp_path: Path) -> None:
    _git("-C", str(fake_tree), "init", "-q")
    _git("-C", str(fake_tree), "add", ".")
    _git("-C", str(fake_tree), "commit", "-q", "-m", "x")
    bare = tmp_path / "repo.git"
    _git("clone", "-q", "--bare", str(fake_tree), str(bare))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tree, commit = bench._released_tree(str(bare), str(scratch))
    assert tree == scratch and len(commit) == 40
    assert (tree / "lib" / "segmentation.py").read_text() == FAKE_FILES["lib/segmentation.py"]


def test_not_a_released_tree_is_refused(bench, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="neither a FIANet checkout"):
        bench._released_tree(str(tmp_path), str(tmp_path))


def test_build_released_stubs_only_during_import(
    bench, fake_tree: Path, clean_modules, capsys
) -> None:
    path_before = list(sys.path)
    model = bench.build_released(fake_tree, num_tmem=3)
    args = model["args"]
    assert (args.swin_type, args.window12, args.num_tmem) == ("base", True, 3)
    assert model["bert"].config.hidden_size == 768  # BertConfig(), not from_pretrained
    assert "Window size 12!" not in capsys.readouterr().out  # stdout stays for the JSON line
    assert sys.path == path_before
    assert not {"mmcv", "mmcv.fileio", "mmseg", "mmseg.utils"} & set(sys.modules)
    # the class attribute was restored: from_pretrained is PreTrainedModel's again
    bert_model = sys.modules["bert.modeling_bert"].BertModel
    assert "from_pretrained" not in bert_model.__dict__
    with pytest.raises(OSError, match="would download"):
        bert_model.from_pretrained("bert-base-uncased")
    # the stubs the released module kept refuse to work rather than pretend
    with pytest.raises(RuntimeError, match="stub"):
        sys.modules["lib.mmcv_custom"].load_checkpoint()


def test_comparison_prints_both_figures_and_the_ratio(bench, capsys) -> None:
    row = {
        "released_path": "/x/FIANet",
        "released_commit": "89a234a28a81892d6de46747525ab529f287bef1",
        "device": "cpu",
        "threads": 2,
        "batch": 1,
        "size": 480,
        "parameters_m": {"fiacli": 251.9, "released": 251.9},
        "max_abs_logit_diff": 5e-7,
        "argmax_agreement": 1.0,
        "wall_s": {"fiacli": [3.0, 3.1, 2.9], "released": [3.2, 3.3, 3.1]},
        "cpu_s": {"fiacli": [6.0, 6.0, 6.0], "released": [6.4, 6.4, 6.4]},
        "load_average": 1.0,
    }
    bench.print_comparison(row, 3)
    out = capsys.readouterr().out
    assert "median 3.000 s per image" in out and "median 3.200 s per image" in out
    assert "fiacli/released: 0.94× (medians)" in out
    assert "@ 89a234a2" in out
    assert "busy machine" not in out
    bench.print_comparison({**row, "load_average_before": 64.0}, 3)
    assert "busy machine: load average 64.0" in capsys.readouterr().out


def test_released_constant_is_gone(bench) -> None:
    assert not hasattr(bench, "RELEASED_CPU_SECONDS")
