"""Where the authors' trained checkpoints are is said the same way everywhere a user looks.

Checked against the source (github.com/Shaosifan/FIANet: its README links no trained weights;
issue #11 gives a BaiduNetDisk share with extraction code 65g4).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHERE = "Shaosifan/FIANet/issues/11"


def test_demo_note_says_where_the_checkpoints_are():
    from fiacli.app.demo import DEMO_NOTE

    assert WHERE in DEMO_NOTE and "65g4" in DEMO_NOTE


def test_convert_help_says_where_the_checkpoints_are(run_cli):
    result = run_cli("convert", "--help")
    text = " ".join(result.stdout.split())
    assert "issue #11" in text and "65g4" in text


def test_readme_says_where_the_checkpoints_are_and_no_links_that_do_not_exist():
    readme = (REPO / "README.md").read_text()
    assert WHERE in readme and "65g4" in readme
    assert "from the links in that README" not in readme
