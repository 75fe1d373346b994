"""Sentence parsing for FIANet: context, ground-object and spatial-position token masks.

FIANet reads one expression three times through BERT, each time with a different attention mask
over the same WordPiece tokens: the whole sentence (context), the ground object ("storage tank")
and the spatial position ("on the lower left"). The paper computes these offline with NLTK; this
module does the same in two modes, recorded in every checkpoint:

``released``
    What the authors' code does (docs/parser.md), quirks included, so their
    checkpoints get the masks they were trained on. See :func:`_released_masks`.
``fiacli``
    The same grammar with the quirks fixed: whole-word class matching that accepts plurals, masks
    aligned to WordPiece tokens through the fast tokenizer's character offsets, and the "of"
    filter applied to the word, not the substring ("on the roof" stays a position).

Part-of-speech tags come from :mod:`fiacli.text.tagger` (NLTK's perceptron or the offline tagger).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from fiacli.core.datasets import RRSISD, dataset_facts
from fiacli.core.errors import FiacliError, UsageError

ParseMode = Literal["fiacli", "released"]
PARSE_MODES: tuple[ParseMode, ...] = get_args(ParseMode)

# The released chunk grammar: one label, three rules, applied in this order.
GRAMMAR = r"""
PP: {<IN><DT>?<JJ.*>?<NN>}
    {<IN><DT>?<JJ.*>?<JJ>}
    {<IN><DT>?<JJ.*><VBD>}
"""
CACHE_FORMAT = "fiacli-parse-cache/1"


@dataclass(frozen=True)
class ParseSettings:
    """How expressions become masks; stored in checkpoints and parse caches as a plain dict."""

    mode: ParseMode = "fiacli"
    classes: tuple[str, ...] = RRSISD.classes
    token_length: int = RRSISD.token_length
    tokenizer: str = "bert-base-uncased"

    def __post_init__(self) -> None:
        if self.mode not in PARSE_MODES:
            raise UsageError(
                f"unknown parse mode {self.mode!r}; choose one of {', '.join(PARSE_MODES)}"
            )
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or not all(isinstance(c, str) and c.strip() for c in self.classes):
            raise FiacliError("the class vocabulary must be a non-empty list of class names")
        if not isinstance(self.token_length, int) or self.token_length < 3:
            raise FiacliError(f"token length must be an integer >= 3, got {self.token_length!r}")

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        mode: str = "fiacli",
        *,
        token_length: int | None = None,
        tokenizer: str | None = None,
    ) -> ParseSettings:
        """The vocabulary and token budget the released code uses for ``dataset``.

        ``dataset`` is a name of :data:`fiacli.core.datasets.DATASETS` ("RRSIS-D" works too);
        the synthetic scenes are parsed with the RRSIS-D vocabulary, as they use its classes.
        """
        facts = dataset_facts(dataset)
        return cls(
            mode=mode,  # type: ignore[arg-type]  # a str: __post_init__ checks it
            classes=facts.classes,
            token_length=token_length or facts.token_length,
            tokenizer=tokenizer or cls.tokenizer,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "classes": list(self.classes),
            "token_length": self.token_length,
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParseSettings:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != fields:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise FiacliError(f"parse settings need exactly the keys {sorted(fields)}, got {got}")
        return cls(**{**d, "classes": tuple(d["classes"])})

    @classmethod
    def from_checkpoint_meta(
        cls, meta: dict[str, Any], source: str = "this checkpoint"
    ) -> ParseSettings:
        """The settings a checkpoint's metadata records (its ``parse`` entry), or a FiacliError
        naming ``source`` when it records none: without them text cannot be parsed as in
        training. Prediction and evaluation both read them through this."""
        stored = meta.get("parse") if isinstance(meta, dict) else None
        if not stored:
            raise FiacliError(
                f"{source} records no parse settings; it cannot turn text into tokens as in "
                "its training"
            )
        return cls.from_dict(stored)


@dataclass(frozen=True)
class ParsedExpression:
    """One expression's token ids and its three masks, plus the phrases the masks stand for."""

    text: str
    objects: tuple[str, ...]
    positions: tuple[str, ...]
    position_fallback: bool
    input_ids: tuple[int, ...]
    context_mask: tuple[int, ...]
    object_mask: tuple[int, ...]
    position_mask: tuple[int, ...]
    settings: ParseSettings
    tagger: str
    truncated: str | None = None

    def to_dict(self, *, with_settings: bool = True) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if with_settings:
            d["settings"] = self.settings.to_dict()
        else:
            del d["settings"]
        return d

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], settings: ParseSettings | None = None
    ) -> ParsedExpression:
        """Inverse of :meth:`to_dict`; ``settings`` fills in a dict written without them."""
        d = dict(d)
        raw = d.pop("settings", None)
        settings = ParseSettings.from_dict(raw) if raw is not None else settings
        if settings is None:
            raise FiacliError("parsed expression has no settings")
        names = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        if not names >= set(d) or not set(d) >= names - {"truncated"}:
            raise FiacliError(f"parsed expression needs the keys {sorted(names)}, got {sorted(d)}")
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples}, settings=settings)

    @property
    def tokens(self) -> list[str]:
        """The WordPiece tokens behind ``input_ids`` (padding included)."""
        from fiacli.text.tokenizer import load_tokenizer

        return load_tokenizer(self.settings.tokenizer).convert_ids_to_tokens(list(self.input_ids))


# --------------------------------------------------------------------------------------------
# Words, tags, chunks
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _word_tokenizer() -> Any:
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def nltk_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """NLTK word tokens and their character spans in ``text``.

    ``word_tokenize(text)`` first splits sentences with punkt (a data package that pip does not
    install); for one sentence that step is the identity, so this is
    ``word_tokenize(text, preserve_line=True)``. Only a full stop *inside* the text differs:
    punkt would split "car. it" into two sentences and make "car" and "." separate tokens.
    """
    from nltk.tokenize.util import align_tokens

    tokenizer = _word_tokenizer()
    words = tokenizer.tokenize(text)
    try:
        if '"' in text or "``" in text or "''" in text:  # the tokenizer rewrites quotes
            spans = list(tokenizer.span_tokenize(text))
        else:
            spans = align_tokens(words, text)
    except ValueError:  # alignment failed on exotic quoting; fall back to a left-to-right search
        spans = []
    if len(spans) != len(words):
        spans, pos = [], 0
        for word in words:
            probe = {"``": '"', "''": '"'}.get(word, word)
            start = text.find(probe, pos)
            start = pos if start < 0 else start
            spans.append((start, start + len(probe)))
            pos = spans[-1][1]
    return words, spans


@functools.lru_cache(maxsize=4096)
def _tokenized(phrase: str) -> tuple[str, ...]:
    """``word_tokenize(phrase)`` for class names and chunk texts, which repeat a lot."""
    return tuple(_word_tokenizer().tokenize(phrase))


@functools.lru_cache(maxsize=1)
def _chunker() -> Any:
    import nltk

    return nltk.RegexpParser(GRAMMAR)


def pp_chunks(words: Sequence[str], tags: Sequence[str]) -> list[tuple[int, int]]:
    """Word spans ``[start, end)`` of the grammar's PP chunks, in sentence order."""
    if not words:
        return []
    tree = _chunker().parse(list(zip(words, tags, strict=True)))
    spans, index = [], 0
    for node in tree:
        if hasattr(node, "label"):
            spans.append((index, index + len(node)))
            index += len(node)
        else:
            index += 1
    return spans


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


@dataclass
class _Encoding:
    """WordPiece ids of a sentence cut to the token budget, with character offsets."""

    ids: list[int]  # [CLS] … [SEP] (released: plain cut, so [SEP] may be gone), unpadded
    offsets: list[tuple[int, int]]  # per id; (0, 0) for special tokens
    truncated: str | None


def _encode(text: str, settings: ParseSettings) -> _Encoding:
    """Token ids within the budget and the text that did not fit.

    fiacli mode keeps ``[SEP]`` last; released mode cuts like the released loader
    (``input_ids[:max_tokens]``), so a long sentence loses its ``[SEP]``, and one exactly one token
    too long loses only that (no words: ``truncated`` stays None).
    """
    from fiacli.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings.tokenizer)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    budget = settings.token_length
    if len(ids) <= budget:
        return _Encoding(ids, offsets, None)
    if settings.mode == "released":
        # LAVT-style `input_ids[:max_tokens]`: the cut also drops [SEP].
        kept_ids, kept_offsets = ids[:budget], offsets[:budget]
        first_cut = budget
    else:
        kept_ids = ids[: budget - 1] + [ids[-1]]
        kept_offsets = offsets[: budget - 1] + [offsets[-1]]
        first_cut = budget - 1
    cut_words = [o for o in offsets[first_cut:-1] if o != (0, 0)]
    truncated = text[cut_words[0][0] :].strip() if cut_words else None
    return _Encoding(kept_ids, kept_offsets, truncated)


def _mark(mask: list[int], start: int, count: int) -> bool:
    """``mask[start:start+count] = 1`` clipped to the budget; True when anything was marked."""
    end = min(start + count, len(mask))
    for k in range(start, end):
        mask[k] = 1
    return end > start


def _released_masks(
    text: str, words: list[str], chunks: list[tuple[int, int]], settings: ParseSettings
) -> tuple[list[int], list[int], list[str], list[str]]:
    """Object and position masks exactly as the released data loader builds them.

    * Object: for each class (order does not matter: marks only add up), if the class occurs in
      the text as a plain, case-sensitive substring ("car" in "cart"), take the first NLTK word
      containing the class's first word (word 0 if none does) and mark
      ``len(word_tokenize(class))`` positions from that word's index + 1.
    * Position: PP chunks whose text contains the substring "of" are dropped ("on the roof"
      too). Each kept chunk is located at the first word *equal to* its first word (so a
      preposition that already occurred earlier marks the earlier place, as the released loader
      does: docs/parser.md#position-mask) and marks ``len(word_tokenize(chunk))`` positions from
      index + 1. An all-zero mask falls back to the sentence mask, as the released code checks the
      mask's sum rather than the number of chunks.
    * The indices are NLTK word indices used as WordPiece positions (+1 for [CLS]): a word split
      into several WordPieces shifts every later mark. The released code writes the marks into a
      Python list by slice assignment, which *grows* the list when a mark passes the budget and
      then fails to batch; no released checkpoint can have seen that, so marks are clipped here.
    """
    budget = settings.token_length
    object_mask, position_mask = [0] * budget, [0] * budget
    objects: list[tuple[int, int]] = []
    for cls in settings.classes:
        if cls not in text:
            continue
        cls_words = _tokenized(cls)
        index = next((i for i, w in enumerate(words) if cls_words[0] in w), 0)
        if _mark(object_mask, index + 1, len(cls_words)):
            objects.append((index, index + len(cls_words)))
    positions: list[tuple[int, int]] = []
    for start, end in chunks:
        phrase = " ".join(words[start:end])
        if "of" in phrase:
            continue
        index = words.index(words[start])
        if _mark(position_mask, index + 1, len(_tokenized(phrase))):
            positions.append((index, index + end - start))
    as_text = lambda span: " ".join(words[span[0] : span[1]])  # noqa: E731
    return object_mask, position_mask, _ordered(objects, as_text), _ordered(positions, as_text)


def _ordered(spans: list[tuple[int, int]], as_text: Any) -> list[str]:
    """Phrases in sentence order, each span once, dropping spans inside another found span."""
    unique = sorted(set(spans))
    outer = [s for s in unique if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in unique)]
    return [as_text(s) for s in outer]


def class_pattern(cls: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of a class name, its last word optionally plural.

    "storage tank" matches "storage tanks" and "Storage  Tank"; "harbor" also "harbours"; "bus"
    "buses"; "chimney" "chimneys"; "car" never "cart" or "scar".
    """
    parts = [re.escape(w) for w in cls.lower().split()]
    last = parts[-1]
    if last.endswith("or"):  # harbor / harbour
        last = last[:-2] + "ou?r"
    if last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "(?:y|ies)"
    else:
        last = last + "(?:s|es)?"
    return re.compile(r"(?<![\w-])" + r"[\s-]+".join([*parts[:-1], last]) + r"(?![\w-])", re.I)


@functools.lru_cache(maxsize=64)
def _class_patterns(classes: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    return [(c, class_pattern(c)) for c in classes]


def _token_span(enc: _Encoding, start: int, end: int) -> list[int]:
    """Indices of the kept WordPiece tokens overlapping characters ``[start, end)``."""
    return [k for k, (s, e) in enumerate(enc.offsets) if (s, e) != (0, 0) and s < end and e > start]


def _fiacli_masks(
    text: str,
    words: list[str],
    spans: list[tuple[int, int]],
    chunks: list[tuple[int, int]],
    enc: _Encoding,
    settings: ParseSettings,
) -> tuple[list[int], list[int], list[str], list[str]]:
    """Object and position masks over WordPiece tokens (character-offset alignment).

    Each class marks its first whole-word occurrence; an occurrence inside a longer class's match
    ("road" in "road marking") is not a separate object. Chunks containing the *word* "of" are
    dropped. A phrase is listed only if at least one of its tokens fits the budget.
    """
    budget = settings.token_length
    object_mask, position_mask = [0] * budget, [0] * budget
    found: list[tuple[int, int]] = []
    for _, pattern in _class_patterns(settings.classes):
        match = pattern.search(text)
        if match:
            found.append(match.span())
    found = [s for s in found if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in found)]
    objects: list[tuple[int, int]] = []
    for start, end in found:
        tokens = _token_span(enc, start, end)
        for k in tokens:
            object_mask[k] = 1
        if tokens:
            objects.append((start, end))
    positions: list[tuple[int, int]] = []
    for first, last in chunks:
        if _dropped_by_of_rule(words[first:last], "fiacli"):
            continue
        start, end = spans[first][0], spans[last - 1][1]
        tokens = _token_span(enc, start, end)
        for k in tokens:
            position_mask[k] = 1
        if tokens:
            positions.append((start, end))
    as_text = lambda span: text[span[0] : span[1]]  # noqa: E731
    return object_mask, position_mask, _ordered(objects, as_text), _ordered(positions, as_text)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _clean(expression: str) -> str:
    if not isinstance(expression, str):
        raise FiacliError(f"an expression must be text, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise FiacliError(
            "the expression is empty; describe the object, e.g. 'the ship on the left'"
        )
    return text


def _parse_one(text: str, settings: ParseSettings, tagger_name: str, tag: Any) -> ParsedExpression:
    words, spans = nltk_words(text)
    chunks = pp_chunks(words, tag(words))
    enc = _encode(text, settings)
    budget = settings.token_length
    context = [1] * len(enc.ids) + [0] * (budget - len(enc.ids))
    if settings.mode == "released":
        obj, pos, objects, positions = _released_masks(text, words, chunks, settings)
    else:
        obj, pos, objects, positions = _fiacli_masks(text, words, spans, chunks, enc, settings)
    fallback = not any(pos)
    return ParsedExpression(
        text=text,
        objects=tuple(objects),
        positions=() if fallback else tuple(positions),
        position_fallback=fallback,
        input_ids=tuple(enc.ids + [0] * (budget - len(enc.ids))),
        context_mask=tuple(context),
        object_mask=tuple(obj),
        position_mask=tuple(context if fallback else pos),
        settings=settings,
        tagger=tagger_name,
        truncated=enc.truncated,
    )


def parse(
    expression: str, settings: ParseSettings | None = None, *, tagger: str = "auto"
) -> ParsedExpression:
    """Parse one expression into token ids and context / object / position masks."""
    return parse_many([expression], settings, tagger=tagger)[0]


def parse_many(
    expressions: Iterable[str], settings: ParseSettings | None = None, *, tagger: str = "auto"
) -> list[ParsedExpression]:
    """:func:`parse` for many expressions, loading the tokenizer and tagger once."""
    from fiacli.text.tagger import resolve_tagger

    settings = settings or ParseSettings()
    texts = [_clean(e) for e in expressions]  # refuse bad input before loading anything
    name, tag = resolve_tagger(tagger)
    return [_parse_one(text, settings, name, tag) for text in texts]


def _dropped_by_of_rule(words: Sequence[str], mode: str) -> bool:
    """The "of" filter: released drops on the substring ("roof"), fiacli on the word."""
    if mode == "released":
        return "of" in " ".join(words)
    return any(w.lower() == "of" for w in words)


def strip_position(
    expression: str, settings: ParseSettings | None = None, *, tagger: str = "auto"
) -> str:
    """The expression without its spatial phrase(s): "the ship on the left" -> "the ship".

    Removes every PP chunk the mode keeps as a position, together with an "of …" chunk right
    after it ("on the left of the road" goes as a whole). Returned unchanged when there is no
    spatial phrase or when nothing but punctuation would be left.
    """
    from fiacli.text.tagger import resolve_tagger

    settings = settings or ParseSettings()
    text = _clean(expression)
    _, tag = resolve_tagger(tagger)
    words, spans = nltk_words(text)
    cut: list[tuple[int, int]] = []  # word spans to remove
    for first, last in pp_chunks(words, tag(words)):
        if not _dropped_by_of_rule(words[first:last], settings.mode):
            cut.append((first, last))
        elif cut and cut[-1][1] == first:
            cut[-1] = (cut[-1][0], last)
    pieces, pos = [], 0
    for first, last in cut:
        pieces.append(text[pos : spans[first][0]])
        pos = spans[last - 1][1]
    pieces.append(text[pos:])
    stripped = re.sub(r"\s+", " ", "".join(pieces)).strip(" ,;:")
    stripped = re.sub(r"\s+([,.;:!?])", r"\1", stripped)
    return stripped if re.search(r"\w", stripped) else text


# --------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------

_CLASS_NAME = re.compile(r"[a-z0-9][a-z0-9' -]*")


def _read_utf8(path: str | Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise FiacliError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FiacliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FiacliError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


def read_class_file(path: str | Path) -> tuple[str, ...]:
    """A class vocabulary file: UTF-8, one class per line, ``#`` starts a comment.

    Blank lines are skipped; names are lower-cased (dataset sentences are) and inner whitespace
    collapsed. A name may hold letters, digits, spaces, hyphens and apostrophes; anything else
    (commas, tabs of a CSV, …), a duplicate, or a file without any class is an error that names
    the line.
    """
    classes: list[str] = []
    for number, raw in enumerate(_read_utf8(path, "class file").splitlines(), 1):
        name = " ".join(raw.split("#", 1)[0].split()).lower()
        if not name:
            continue
        if not _CLASS_NAME.fullmatch(name):
            raise FiacliError(
                f"{path}, line {number}: {raw.strip()!r} is not a class name "
                "(one class per line: letters, digits, spaces, '-'; '#' for comments)"
            )
        if name in classes:
            raise FiacliError(f"{path}, line {number}: class {name!r} is listed twice")
        classes.append(name)
    if not classes:
        raise FiacliError(f"{path} lists no classes (one class per line, '#' for comments)")
    return tuple(classes)


def read_expression_file(path: str | Path) -> list[str]:
    """The expressions of a UTF-8 text file: one per line, stripped.

    Blank lines are skipped, and so are comment lines: a line whose first non-blank character is
    ``#``. A ``#`` later in a line is part of the expression ("the #2 runway"). A missing,
    unreadable or non-UTF-8 file, or one without any expression, is a FiacliError naming it.
    ``fiacli parse -i`` and ``fiacli segment --expressions`` read files with this.
    """
    lines = _read_utf8(path, "expression file").splitlines()
    expressions = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not expressions:
        raise FiacliError(
            f"{path} holds no expression (one expression per line; '#' starts a comment line)"
        )
    return expressions


# --------------------------------------------------------------------------------------------
# Parse cache (JSONL)
# --------------------------------------------------------------------------------------------


def _cache_header(settings: ParseSettings, tagger: str, count: int) -> dict[str, Any]:
    from fiacli import __version__

    return {
        "format": CACHE_FORMAT,
        "fiacli_version": __version__,
        "settings": settings.to_dict(),
        "tagger": tagger,
        "count": count,
    }


def write_parse_cache(path: str | Path, parsed: Sequence[ParsedExpression]) -> None:
    """Write a JSONL parse cache atomically: a header line, then one expression per line.

    All expressions must share one settings object and tagger (they come from one run).
    """
    from fiacli.core.io import atomic_output

    if not parsed:
        raise FiacliError("nothing to write: no parsed expressions")
    settings, tagger = parsed[0].settings, parsed[0].tagger
    if any(p.settings != settings or p.tagger != tagger for p in parsed):
        raise FiacliError("a parse cache holds one settings/tagger combination; got several")
    unique = list({p.text: p for p in parsed}.values())
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(_cache_header(settings, tagger, len(unique))) + "\n")
        for p in unique:
            f.write(json.dumps(p.to_dict(with_settings=False), ensure_ascii=False) + "\n")


def read_cache_header(path: str | Path) -> dict[str, Any] | None:
    """The header of a parse cache, or None when the file is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) and header.get("format") == CACHE_FORMAT else None


def load_parse_cache(
    path: str | Path, settings: ParseSettings, *, tagger: str | None = None
) -> dict[str, ParsedExpression] | None:
    """The cached parses by text, or None when the cache is missing, unreadable or stale.

    Stale means written by another fiacli version, with other settings, or (when ``tagger`` is
    given) by another tagger.
    """
    from fiacli import __version__

    header = read_cache_header(path)
    if header is None or header.get("fiacli_version") != __version__:
        return None
    if header.get("settings") != settings.to_dict():
        return None
    if tagger is not None and header.get("tagger") != tagger:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            next(f)
            parsed = [
                ParsedExpression.from_dict(json.loads(line), settings) for line in f if line.strip()
            ]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, FiacliError, TypeError):
        return None
    if len(parsed) != header.get("count"):
        return None
    return {p.text: p for p in parsed}


def parse_cached(
    expressions: Iterable[str],
    settings: ParseSettings,
    cache_path: str | Path,
    *,
    tagger: str = "auto",
) -> dict[str, ParsedExpression]:
    """Parses for ``expressions`` (keyed as given), reusing ``cache_path`` when it matches.

    What train and eval call: expressions missing from a valid cache are parsed and the cache is
    rewritten with all of them; an invalid or stale cache is replaced.
    """
    from fiacli.text.tagger import resolve_tagger

    expressions = list(expressions)
    name, _ = resolve_tagger(tagger)
    cached = load_parse_cache(cache_path, settings, tagger=name) or {}
    missing = sorted({_clean(e) for e in expressions} - set(cached))
    if missing:
        cached.update((p.text, p) for p in parse_many(missing, settings, tagger=name))
        write_parse_cache(cache_path, list(cached.values()))
    return {e: cached[_clean(e)] for e in expressions}
