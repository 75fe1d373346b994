"""`fiacli parse`: single expressions, batch files, dataset splits, and every bad input."""

from __future__ import annotations

import json

import nltk
import pytest

from fiacli.core.datasets import DATASET_NAMES
from fiacli.text.tagger import reset_tagger_cache


@pytest.fixture(autouse=True)
def wide_stderr(monkeypatch):
    """A wide error console, so 'one line' is about the message, not the terminal's wrapping."""
    from fiacli.core.console import err_console

    monkeypatch.setattr(err_console, "_width", 300)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_single_expression_table(run_cli):
    result = run_cli("parse", "the white van on the left road", "--dataset", "refsegrs",
                     "--tagger", "offline")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "the white van on the left road" in out
    assert "van, road" in out and "on the left" in out
    assert "fiacli mode, refsegrs vocabulary (14 classes), 20 tokens" in out
    assert "[SEP]" in out and "[PAD]" not in out  # token rows stop at the sentence


def test_single_expression_json(run_cli):
    result = run_cli("parse", "the storage tank on the lower left", "--json", "--tagger", "offline")
    assert result.exit_code == 0
    d = json.loads(result.stdout)
    assert d["objects"] == ["storage tank"] and d["positions"] == ["on the lower left"]
    assert d["settings"]["token_length"] == 22 and d["tagger"] == "offline"
    assert d["tokens"][:4] == ["[CLS]", "the", "storage", "tank"]
    assert [k for k, v in enumerate(d["position_mask"]) if v] == [4, 5, 6, 7]
    assert d["truncated"] is None


def test_released_mode_from_the_cli(run_cli):
    result = run_cli("parse", "the cart on the left", "--dataset", "refsegrs", "--mode",
                     "released", "--json", "--tagger", "offline")  # fmt: skip
    assert json.loads(result.stdout)["objects"] == ["cart"]
    table = run_cli("parse", "the cart on the left", "--dataset", "refsegrs", "--mode", "released",
                    "--tagger", "offline")  # fmt: skip
    assert "released mode: marks sit at NLTK word positions" in table.stdout


def test_custom_class_file(run_cli, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# farm things\nsilo\ngrain bin\n")
    result = run_cli("parse", "the grain bins near the silo", "--classes", str(classes), "--json",
                     "--tagger", "offline")  # fmt: skip
    d = json.loads(result.stdout)
    assert d["objects"] == ["grain bins", "silo"]
    assert d["settings"]["classes"] == ["silo", "grain bin"]


def test_no_class_found_says_which_vocabulary(run_cli):
    result = run_cli("parse", "the white van on the left road", "--tagger", "offline")
    assert "no class of the rrsisd vocabulary occurs" in result.stdout


def test_truncation_warns_with_what_was_cut(run_cli):
    text = "the small white vehicle parked on the left side of the long road near the tall building"
    result = run_cli("parse", text, "--token-length", "12", "--tagger", "offline", "--json")
    assert result.exit_code == 0
    line = one_line(result.stderr)
    assert "longer than 12 tokens" in line and "'the long road near the tall building'" in line
    assert json.loads(result.stdout)["truncated"] == "the long road near the tall building"


def test_batch_text_file(run_cli, tmp_path):
    source = tmp_path / "expressions.txt"
    source.write_text("the ship on the left\n\nthe dam in the middle\nthe ship on the left\n")
    out = tmp_path / "parsed.jsonl"
    result = run_cli("parse", "-i", str(source), "-o", str(out), "--tagger", "offline", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["expressions"] == 2 and summary["with_position"] == 2
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["count"] == 2
    assert [json.loads(x)["text"] for x in lines[1:]] == [
        "the ship on the left",
        "the dam in the middle",
    ]
    again = run_cli("parse", "-i", str(source), "-o", str(out), "--tagger", "offline")
    assert again.exit_code == 1 and "already exists" in one_line(again.stderr)
    assert (
        run_cli("parse", "-i", str(source), "-o", str(out), "-f", "--tagger", "offline").exit_code
        == 0
    )


def test_batch_text_file_skips_comment_lines(run_cli, tmp_path):
    """-i reads files as segment --expressions does (fiacli.text.parsing.read_expression_file)."""
    source = tmp_path / "expressions.txt"
    source.write_text("# tanks of scene 3\nthe storage tank on the left\n  # done\n")
    out = tmp_path / "parsed.jsonl"
    result = run_cli("parse", "-i", str(source), "-o", str(out), "--tagger", "offline", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["expressions"] == 1
    texts = [json.loads(x)["text"] for x in out.read_text().splitlines()[1:]]
    assert texts == ["the storage tank on the left"]


def test_batch_file_of_comments_only_is_one_line(run_cli, tmp_path):
    source = tmp_path / "expressions.txt"
    source.write_text("# nothing yet\n\n")
    result = run_cli("parse", "-i", str(source), "-o", str(tmp_path / "p.jsonl"))
    assert result.exit_code == 1
    assert "holds no expression" in one_line(result.stderr)
    assert not (tmp_path / "p.jsonl").exists()


def test_batch_non_utf8_file_is_one_line(run_cli, tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes("the ship\nthe ch\xe2teau on the left\n".encode("latin-1"))
    result = run_cli("parse", "-i", str(source), "-o", str(tmp_path / "p.jsonl"))
    assert result.exit_code == 1
    assert "is not UTF-8 text (byte 0xe2 on line 2)" in one_line(result.stderr)
    assert not (tmp_path / "p.jsonl").exists()


def test_dataset_split_calls_the_loader(run_cli, tmp_path, monkeypatch):
    calls = []

    def fake_load(dataset, root, split):
        calls.append((dataset, root, split))
        return ["the ship on the left", "the harbor"]

    monkeypatch.setattr("fiacli.training.datasets.load_expressions", fake_load)
    out = tmp_path / "parsed.jsonl"
    result = run_cli("parse", "--dataset", "rrsisd", "--data-root", str(tmp_path), "--split", "val",
                     "-o", str(out), "--tagger", "offline", "--mode", "released")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert calls == [("rrsisd", tmp_path, "val")]
    header = json.loads(out.read_text().splitlines()[0])
    assert header["settings"]["mode"] == "released" and header["count"] == 2


def test_refsegrs_split_end_to_end(run_cli, tmp_path):
    root = tmp_path / "refsegrs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "output_phrase_test.txt").write_text("12 the road on the left\n13 the white car\n")
    out = tmp_path / "parsed.jsonl"
    result = run_cli("parse", "--dataset", "refsegrs", "--data-root", str(root), "-o", str(out),
                     "--tagger", "offline", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["expressions"] == 2 and summary["position_fallback"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of"),
        (("the ship", "-i", "x.txt"), "give exactly one of"),
        (("-i", "x.txt"), "needs -o/--output"),
        (("--data-root", "."), "--data-root needs --dataset"),
        (("the ship", "--tagger", "spacy"), "'spacy' is not one of"),
    ],
)
def test_usage_errors_exit_2(run_cli, args, message):
    result = run_cli("parse", *args)
    assert result.exit_code == 2
    assert message in unboxed(result.stderr)


def unboxed(stderr: str) -> str:
    """Click's usage error without rich's box and wrapping."""
    return " ".join(stderr.translate({ord(c): " " for c in "│╭╰╮╯─"}).split())


def test_unknown_dataset_lists_choices(run_cli):
    result = run_cli("parse", "the ship", "--dataset", "refcoco")
    assert result.exit_code == 2
    choices = ", ".join(repr(name) for name in DATASET_NAMES)
    assert f"'refcoco' is not one of {choices}" in unboxed(result.stderr)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_expression(run_cli, text):
    result = run_cli("parse", text)
    assert result.exit_code == 1
    assert "the expression is empty" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("content", "message"),
    [("# only a comment\n\n", "lists no classes"), ("silo;barn\n", "line 1: 'silo;barn' is not")],
)
def test_bad_class_file(run_cli, tmp_path, content, message):
    classes = tmp_path / "classes.txt"
    classes.write_text(content)
    result = run_cli("parse", "the silo", "--classes", str(classes))
    assert result.exit_code == 1
    assert message in one_line(result.stderr)


def test_nltk_tagger_missing_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    reset_tagger_cache()
    try:
        result = run_cli("parse", "the ship on the left", "--tagger", "nltk")
    finally:
        reset_tagger_cache()
    assert result.exit_code == 1
    assert "NLTK_DATA" in one_line(result.stderr)


def test_batch_output_must_be_a_jsonl_file(run_cli, tmp_path):
    """A .csv would silently hold JSON lines."""
    source = tmp_path / "e.txt"
    source.write_text("the ship\n")
    r = run_cli("parse", "-i", str(source), "-o", str(tmp_path / "p.csv"), "--tagger", "offline")
    assert r.exit_code == 2 and "give a .jsonl path" in " ".join(r.stderr.split())
    assert not (tmp_path / "p.csv").exists()
