"""Part-of-speech tags for the spatial-phrase grammar: NLTK's perceptron, or an offline stand-in.

The released parser tags with NLTK's ``averaged_perceptron_tagger_eng``, a data package that pip
does not install and that many machines lack. ``--tagger auto`` uses it when NLTK finds it and
otherwise this module's offline tagger, which needs no data at all.

The offline tagger is not a general English tagger. It only has to reproduce what the chunk grammar
``<IN><DT>?<JJ.*>?<NN>`` / ``…<JJ>`` / ``…<JJ.*><VBD>`` looks at, the way the perceptron does it on
referring expressions: prepositions (IN), determiners (DT), adjectives (JJ/JJR/JJS), singular
nouns (NN as opposed to NNS/NNP) and the perceptron's habit of tagging "left" as VBD after "lower".
It is a compact lexicon, suffix rules and a handful of context rules, written by hand from
observing the perceptron; ``bench/tagger_agreement.py`` measures how often both give the same
object and position fragments (see the README for the figures).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args

from fiacli.core.errors import FiacliError, UsageError

TaggerName = Literal["auto", "nltk", "offline"]
TAGGER_CHOICES: tuple[TaggerName, ...] = get_args(TaggerName)
NLTK_RESOURCE = "averaged_perceptron_tagger_eng"
Tag = Callable[[Sequence[str]], list[str]]


# --------------------------------------------------------------------------------------------
# Choosing a tagger
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_perceptron() -> tuple[object | None, str]:
    """NLTK's English perceptron tagger, or None and the reason it could not be loaded."""
    try:
        from nltk.tag.perceptron import PerceptronTagger

        return PerceptronTagger(lang="eng"), ""
    except LookupError:
        return None, f"NLTK data package {NLTK_RESOURCE!r} not found"
    except (OSError, ValueError, KeyError) as exc:  # a truncated zip or json
        return None, f"NLTK data package {NLTK_RESOURCE!r} is unreadable ({exc})"


def nltk_tagger_available() -> bool:
    return _load_perceptron()[0] is not None


def reset_tagger_cache() -> None:
    """Forget the NLTK lookup (after changing ``nltk.data.path``)."""
    _load_perceptron.cache_clear()


def resolve_tagger(choice: str = "auto") -> tuple[str, Tag]:
    """``(name, tag)`` for ``auto`` | ``nltk`` | ``offline``; ``name`` is the one that runs."""
    if choice not in TAGGER_CHOICES:
        raise UsageError(f"unknown tagger {choice!r}; choose one of {', '.join(TAGGER_CHOICES)}")
    if choice != "offline":
        perceptron, reason = _load_perceptron()
        if perceptron is not None:
            return "nltk", lambda words: [t for _, t in perceptron.tag(list(words))]  # type: ignore[attr-defined]
        if choice == "nltk":
            raise FiacliError(
                f"--tagger nltk: {reason}; install it with `python -m nltk.downloader "
                f"{NLTK_RESOURCE}` or point NLTK_DATA at a folder holding "
                f"taggers/{NLTK_RESOURCE}, or use --tagger offline"
            )
    return "offline", offline_tag


# --------------------------------------------------------------------------------------------
# The offline tagger: lexicon
# --------------------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_FUNCTION: dict[str, str] = {
    **dict.fromkeys(
        _words("the a an this these those each every another both all some any no either neither"),
        "DT",
    ),
    **dict.fromkeys(
        _words(
            "on in at near from of with by behind below above under over between beside besides "
            "across along around inside outside into onto through within without among amongst "
            "against toward towards beyond underneath beneath alongside past upon via except like "
            "amid throughout about after before than as if because while whether atop off per "
            "opposite"
        ),
        "IN",
    ),
    "to": "TO",
    **dict.fromkeys(_words("and or but nor"), "CC"),
    **dict.fromkeys(_words("it they them he she we you i me us"), "PRP"),
    **dict.fromkeys(_words("its their his her our your my"), "PRP$"),
    **dict.fromkeys(_words("which whose"), "WDT"),
    **dict.fromkeys(_words("who what"), "WP"),
    **dict.fromkeys(_words("where when how why"), "WRB"),
    **dict.fromkeys(_words("can could will would should may might must shall"), "MD"),
    "there": "EX",
    **dict.fromkeys(_words("is has looks lies sits stands appears seems contains"), "VBZ"),
    **dict.fromkeys(_words("are have"), "VBP"),
    **dict.fromkeys(_words("was were had"), "VBD"),
    **dict.fromkeys(_words("be"), "VB"),
    **dict.fromkeys(_words("been"), "VBN"),
    **dict.fromkeys(_words("being"), "VBG"),
    **dict.fromkeys(
        _words(
            "very far just slightly directly immediately partially partly further also not only "
            "almost nearly quite too so really mostly completely fully entirely exactly away "
            "here somewhat rather even still closely"
        ),
        "RB",
    ),
    **dict.fromkeys(_words("up down out"), "RP"),
    **dict.fromkeys(
        _words(
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty thirty hundred"
        ),
        "CD",
    ),
    **dict.fromkeys(_words("more less fewer"), "JJR"),
    **dict.fromkeys(_words("most least"), "JJS"),
    **dict.fromkeys(_words("many several few much other same such own"), "JJ"),
}

_PUNCT = {".": ".", ",": ",", ":": ":", ";": ":", "!": ".", "?": ".", "(": "(", ")": ")"}

# Adjectives the suffix rules would miss; what a referring expression says about colour, size,
# shape, state and material.
_ADJECTIVES = _words(
    # colours and light
    "white black red green blue yellow grey gray brown purple pink dark light bright pale "
    "golden silver beige cyan violet turquoise transparent colorful colourful "
    # size and shape
    "large big small little tiny huge giant long short tall high low wide narrow thin thick "
    "broad vast massive square rectangular circular oval triangular curved straight "
    "flat steep irregular regular elongated compact "
    # state, age, material, kind
    "new old empty full open closed busy crowded quiet vacant main major minor central "
    "single double dual whole entire similar different adjacent parallel perpendicular "
    "diagonal horizontal vertical lateral visible hidden dense sparse isolated concrete wooden "
    "metal metallic paved unpaved industrial residential commercial agricultural coastal "
    "regional national municipal natural artificial local internal external urban rural "
    "private public dry wet sandy rocky grassy muddy dirty clean shiny dusty snowy icy hazy "
    "cloudy shady leafy hilly bare pedestrian "
    "first second third fourth fifth sixth last"
)
_COMPARATIVES = _words(
    "lower larger smaller bigger longer shorter taller higher wider narrower brighter darker "
    "closer nearer greater thinner thicker lighter farther newer older"
)
# Nouns the suffix rules would take for plurals, verbs, adverbs or superlatives.
_NOUNS = _words(
    "bus gas grass glass class mass pass overpass underpass bypass canvas campus lens status "
    "compass series species news surface terminal canal hospital hotel tunnel signal "
    "building parking marking crossing landing ceiling ring wing string thing spring swing "
    "railing siding clearing opening housing roofing evening morning "
    "forest nest chest rest test crest interest "
    "bed seed speed reed "
    "family rally valley alley jetty ferry lorry city factory railway expressway highway runway "
    "motorway freeway walkway driveway pathway doorway gateway bay quay body county property "
    "refinery nursery cemetery gallery lobby entry boundary territory party army "
    "trailer river water corner tower container counter border meter cluster shelter harbor "
    "harbour quarter roof roofs hangar apron"
)
_JJ_SUFFIXES = ("ous", "ful", "ive", "ible", "able", "ish", "less", "ern", "ical")
# Words naming a place in the image. Before a noun the perceptron mostly makes them modifiers
# (JJ: "the left side"), alone heads (NN: "on the left"); the exceptions below are its habits.
_POSITION = _words(
    "left right top bottom middle center centre upper north south east west northeast "
    "northwest southeast southwest inner outer back front near"
)
# nouns after which left/right/… stay modifiers even at the end of the sentence
_REGION_NOUNS = _words(
    "side sides part parts area areas half region section portion end court field street "
    "image picture photo column bank quarter zone sector"
)
# nouns after which "right …" stays a modifier, and "left …" too unless it ends the sentence
_LR_JJ_NOUNS = _words("lane lanes road roads ship runway harbor harbour")
_NOUN_LIKE = ("NN", "NNS", "NNP", "VBG")
# After a determiner the perceptron calls some colours nouns ("with a grey/NN roof"), except
# before certain nouns; a colour after a shade or size word follows the same split.
_NOUN_COLOURS = _words("blue purple dark grey silver pink orange brown")
_BLUE_JJ_NOUNS = _words(
    "surface court field truck storage area line water pool lake track grass lawn ships tanks "
    "colour color door tent sign panel dome runway"
)
_DARK_JJ_NOUNS = _words(
    "surface court field truck storage area line water lake ships door tent panel"
)


def _lexical(word: str) -> str:
    """The context-free guess for a lower-cased word."""
    if word in _FUNCTION:
        return _FUNCTION[word]
    if word in _PUNCT:
        return _PUNCT[word]
    if not any(ch.isalnum() for ch in word):
        return ":"
    if word[0].isdigit():
        return "CD"
    if word in _ADJECTIVES:
        return "JJ"
    if word in _COMPARATIVES:
        return "JJR"
    if word in _NOUNS or word in _POSITION:
        return "NN"
    if "-" in word.strip("-"):
        return "HYPHEN"
    if word.endswith("most"):
        return "MOST"
    if word.endswith("ly") and len(word) > 4:
        return "RB"
    if word.endswith("est") and len(word) > 5:
        return "JJS"
    if word.endswith("ing") and len(word) > 4:
        return "VBG"
    if word.endswith("ed") and len(word) > 4:
        return "VBN"
    if word.endswith(_JJ_SUFFIXES) and len(word) > 5:
        return "JJ"
    if re.search(r"[^su]s$", word) and len(word) > 3 and not word.endswith(("ous", "is")):
        return "NNS"
    return "NN"


# --------------------------------------------------------------------------------------------
# The offline tagger: context rules
# --------------------------------------------------------------------------------------------


class _Context:
    """Words and tags around position ``i`` during the left-to-right pass."""

    def __init__(self, low: list[str], base: list[str], tags: list[str], i: int):
        self.low, self.base, self.tags, self.i = low, base, tags, i

    def word(self, k: int) -> str:
        j = self.i + k
        return self.low[j] if 0 <= j < len(self.low) else ""

    def tag(self, k: int) -> str:
        """Tag already given (k < 0) or context-free guess (k > 0)."""
        j = self.i + k
        if not 0 <= j < len(self.low):
            return ""
        return self.tags[j] if k < 0 else self.base[j]

    def noun_next(self) -> bool:
        return self.tag(1) in _NOUN_LIKE or self.tag(1) == "HYPHEN"


def _left_right(c: _Context) -> str:
    w, nxt, after, prev = c.word(0), c.word(1), c.word(2), c.tag(-1)
    if prev in ("JJ", "JJR"):  # upper left, lower right, top left
        if w == "left" and c.word(-1) in ("upper", "top"):
            region = nxt in _REGION_NOUNS or nxt == "next"
            other = c.word(-1) == "upper" and c.noun_next() and nxt not in ("corner", "edge")
            return "VBD" if region or other else "NN"
        if w == "left" and c.word(-1) == "lower" and nxt not in (".", "of", "with", "and"):
            return "VBD"
        return "NN"
    if prev == "RB":  # far left, far right
        return "NN" if w == "left" else "JJ"
    if prev == "IN" and nxt == "to":  # from left to right
        return "VBN" if w == "left" else "NN"
    if prev not in ("DT", "IN", "PRP$", "CC", "") and c.i > 0:  # turning left, facing right
        return "VBD" if w == "left" else "RB"
    if nxt == "next":
        return "JJ"
    if c.noun_next():
        if nxt in _REGION_NOUNS:
            return "JJ"
        if nxt in ("edge", "tower"):
            return "JJ" if w == "right" and after == "of" else "NN"
        if after == "of":
            return "JJ"
        if nxt in _LR_JJ_NOUNS:  # the left lane: NN at the very end, JJ before more words
            return "JJ" if w == "right" or after not in ("", "and") else "NN"
        if not after:
            return "NN"
        return "JJ" if w == "right" else "NN"
    return "NN"


def _position_tag(c: _Context) -> str:
    """left/right/top/bottom/…: a modifier (JJ) before a noun, the head noun (NN) otherwise."""
    w, nxt, after, prev = c.word(0), c.word(1), c.word(2), c.tag(-1)
    if w in ("left", "right"):
        return _left_right(c)
    if w == "near":
        return "JJ" if nxt != "of" and (prev == "DT" or prev == "JJ" and c.noun_next()) else "IN"
    if w == "upper":
        return "NN" if nxt in (".", ",", "of") else "JJ"
    if prev == "RB":  # the very top
        return "JJ"
    if w == "top":
        if nxt in ("left", "right", "next", "with", "and", "near", "above", "below"):
            return "JJ"
        if nxt == "of" or prev == "JJ":
            return "NN"
        if not nxt:
            return "JJ" if c.word(-2) == "on" else "NN"
        return "JJ" if c.noun_next() else "NN"
    if w == "bottom":
        if nxt == "left":
            return "JJ" if after == "of" else "NN"
        if nxt == "right":
            return "JJ" if after not in ("", ",") else "NN"
        if nxt in ("edge", "corner"):
            return "JJ" if after == "of" or (nxt == "corner" and after) else "NN"
        return "JJ" if nxt == "next" or c.noun_next() else "NN"
    if w == "middle":
        if nxt in ("left", "right"):
            return "NN" if after in ("", ",", "and", "near") else "JJ"
        return "JJ" if nxt in ("next", "corner") or c.noun_next() else "NN"
    if w in ("northeast", "northwest", "southeast", "southwest"):
        return "NN"
    if w in ("center", "centre", "outer", "front"):
        return "JJ" if nxt in ("side", "end", "part", "area") else "NN"
    # north, south, east, west, inner, back, northeast, …
    return "JJ" if nxt == "next" or (c.noun_next() and nxt not in ("edge",)) else "NN"


def _colour(c: _Context) -> str:
    """blue, grey, dark, …: JJ or NN the way the perceptron splits them (see _NOUN_COLOURS)."""
    w, nxt, prev = c.word(0), c.word(1), c.tag(-1)
    if prev in ("JJ", "JJR", "JJS", "NN") and c.word(-1) in _ADJECTIVES | _NOUN_COLOURS:
        return "NN" if w in _NOUN_COLOURS and w != "dark" else "JJ"
    if prev != "DT" or (not c.noun_next() and _lexical(nxt) != "JJ"):
        return "JJ"
    if w == "brown":
        return "JJ"
    if w == "dark" and _lexical(nxt) == "JJ":  # dark red, dark green: NN; dark blue: JJ
        return "NN" if nxt in ("red", "green", "yellow", "grey", "silver") else "JJ"
    after = c.word(2) if c.tag(1) == "NN" else ""  # "blue tennis court": court decides too
    if w in ("blue", "purple"):
        return "JJ" if nxt in _BLUE_JJ_NOUNS or after in _BLUE_JJ_NOUNS else "NN"
    if w == "dark":
        return "JJ" if nxt in _DARK_JJ_NOUNS or after in _DARK_JJ_NOUNS else "NN"
    if w == "orange":
        return "NN"
    return "JJ" if nxt in ("truck", "area") or (w == "grey" and nxt == "field") else "NN"


def _hyphenated(c: _Context) -> str:
    """lower-left, right-hand, semi-trailer: a modifier before a noun, else a noun."""
    w = c.word(0)
    head = w.rsplit("-", 1)[-1]
    if head in ("hand", "most"):
        return "JJ" if c.word(1) in _REGION_NOUNS else "NN"
    if head not in _POSITION and _lexical(head) in ("NN", "NNS"):
        return "NN"  # a compound noun: semi-trailer, car-park
    return "JJ" if c.noun_next() or c.word(1) == "next" else "NN"


def offline_tag(words: Sequence[str]) -> list[str]:
    """Penn Treebank tags for ``words`` (NLTK word tokens), without any downloaded data."""
    low = [w.lower() for w in words]
    base = [_lexical(w) for w in low]
    tags: list[str] = []
    for i, word in enumerate(words):
        c = _Context(low, base, tags, i)
        w, prev, nxt = low[i], c.tag(-1), c.word(1)
        if word.isupper() and len(word) > 1 and word.isalpha():
            tag = "NNP" if i else "NN"  # SHOUTED TEXT: the perceptron knows none of it
        elif i and word[:1].isupper() and w not in _FUNCTION and word.isalpha():
            tag = "NNP"  # Capitalised Inside The Sentence: proper nouns to the perceptron
        elif w in _POSITION:
            tag = _position_tag(c)
        elif w in _NOUN_COLOURS or (w in _ADJECTIVES and c.word(-1) in _NOUN_COLOURS):
            tag = _colour(c)
        elif base[i] == "MOST":  # leftmost, topmost
            tag = "JJ" if nxt in ("part", "portion", "region", "side", "end", "area") else "NN"
        elif base[i] == "HYPHEN":
            tag = _hyphenated(c)
        elif w == "next":
            tag = "JJ" if prev == "JJ" else "IN"
        elif w == "close":
            tag = "RB" if nxt == "to" else "JJ"
        elif w == "that":
            content = c.noun_next() or c.tag(1) in ("JJ", "JJS", "JJR", "CD", "VBN")
            tag = "WDT" if prev.startswith("NN") and not content else "DT" if content else "IN"
        elif base[i] == "VBG":
            tag = "NN" if prev in ("DT", "JJ", "PRP$", "IN") else "VBG"
        elif base[i] == "VBN":
            tag = "JJ" if prev in ("DT", "IN", "JJ", "PRP$") else "VBN"
        else:
            tag = base[i]
        tags.append(tag)
    return tags
