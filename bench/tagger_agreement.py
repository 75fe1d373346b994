"""How often the offline tagger gives the same parse as NLTK's perceptron tagger.

For every expression of each set, both taggers parse it in both modes (``released`` and
``fiacli``, RRSIS-D vocabulary and budget; the tagger only affects the position chunks). An
expression agrees when the ground-object phrases, spatial-position phrases, fallback flag and all
three masks are identical in both modes. Prints the figures per set and every disagreeing case with
both taggers' tags; exits 1 when a set is below the threshold (98 %).

    python bench/tagger_agreement.py                      # ../shared/nltk_data next to the repo
    python bench/tagger_agreement.py --nltk-data DIR --show-all
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SETS = {  # the first two were tuned against; held-out was written before tuning and never tuned on
    "dev": DATA / "expressions_dev.txt",
    "dev-queries": DATA / "expressions_dev_queries.txt",
    "held-out": DATA / "expressions_heldout.txt",
}
THRESHOLD = 0.98


def read_expressions(path: Path) -> list[str]:
    """One expression per line; blank lines and '#' comment lines are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def use_nltk_data(folder: Path | None) -> None:
    """Let NLTK find its tagger in ``folder`` (read in place, never copied)."""
    import nltk

    from fiacli.text.tagger import reset_tagger_cache

    if folder is not None:
        nltk.data.path.insert(0, str(folder))
    reset_tagger_cache()


@dataclass
class Agreement:
    total: int = 0
    agreed: int = 0
    same_chunks: int = 0
    disagreements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.agreed / self.total if self.total else 0.0


def _view(parsed) -> tuple:
    return (
        parsed.objects,
        parsed.positions,
        parsed.position_fallback,
        parsed.context_mask,
        parsed.object_mask,
        parsed.position_mask,
    )


def compare(expressions: list[str]) -> Agreement:
    """Agreement of the offline tagger with NLTK's on ``expressions`` (NLTK must be loadable)."""
    from fiacli.text.parsing import ParseSettings, nltk_words, parse_many, pp_chunks
    from fiacli.text.tagger import offline_tag, resolve_tagger

    _, nltk_tag = resolve_tagger("nltk")
    result = Agreement(total=len(expressions))
    views = {}
    for mode in ("released", "fiacli"):
        settings = ParseSettings.for_dataset("rrsisd", mode=mode)
        for tagger in ("nltk", "offline"):
            views[mode, tagger] = [
                _view(p) for p in parse_many(expressions, settings, tagger=tagger)
            ]
    for k, text in enumerate(expressions):
        words, _ = nltk_words(text)
        real, ours = nltk_tag(words), offline_tag(words)
        result.same_chunks += pp_chunks(words, real) == pp_chunks(words, ours)
        if all(views[m, "nltk"][k] == views[m, "offline"][k] for m in ("released", "fiacli")):
            result.agreed += 1
        else:
            detail = "\n      ".join(
                f"{name:7s} " + " ".join(f"{w}/{t}" for w, t in zip(words, tags, strict=True))
                for name, tags in (("nltk", real), ("offline", ours))
            )
            result.disagreements.append((text, detail))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = REPO.parent / "shared" / "nltk_data"
    parser.add_argument(
        "--nltk-data",
        type=Path,
        default=default_data if default_data.is_dir() else None,
        help="folder holding taggers/averaged_perceptron_tagger_eng (default: ../shared/nltk_data)",
    )
    parser.add_argument("--set", action="append", type=Path, help="extra expression file(s)")
    args = parser.parse_args(argv)

    use_nltk_data(args.nltk_data)
    from fiacli.text.tagger import nltk_tagger_available

    if not nltk_tagger_available():
        print(
            "NLTK's averaged_perceptron_tagger_eng was not found; pass --nltk-data DIR",
            file=sys.stderr,
        )
        return 2
    sets = dict(SETS)
    for extra in args.set or []:
        sets[extra.name] = extra
    failed = False
    rows = []
    for name, path in sets.items():
        result = compare(read_expressions(path))
        rows.append((name, result))
        for text, detail in result.disagreements:
            print(f"[{name}] {text}\n      {detail}")
        failed |= result.rate < THRESHOLD
    print()
    header = ("set", "expressions", "same parse", "agreement", "same chunks")
    print(f"{header[0]:22s} {header[1]:>11s} {header[2]:>11s} {header[3]:>10s} {header[4]:>12s}")
    for name, r in rows:
        print(
            f"{name:22s} {r.total:11d} {r.agreed:11d} {r.rate:10.1%} "
            f"{r.same_chunks / r.total:12.1%}"
        )
    print(f"threshold {THRESHOLD:.0%}: {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
