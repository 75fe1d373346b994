"""`fiacli parse`: an expression's context / ground-object / spatial-position parts and masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import JsonOutput, Overwrite
from fiacli.core.datasets import DATASETS, RRSISD, DatasetName
from fiacli.text.parsing import ParseMode, ParseSettings
from fiacli.text.tagger import TaggerName

if TYPE_CHECKING:
    from fiacli.text.parsing import ParsedExpression

DEFAULT_DATASET = RRSISD.name  # whose vocabulary and token budget apply without --dataset

HELP = (
    "Split an expression into the three texts FIANet reads: the context (whole sentence), the "
    "ground object and the spatial position, and show their token masks.\n\n"
    "One EXPRESSION prints a table (or --json). A text file (-i, one expression per line) or a "
    "dataset split (--data-root) is parsed in one go into a JSONL parse cache (-o) that training "
    "and evaluation reuse when its settings match.\n\n"
    "--mode released reproduces the authors' parser, quirks included (substring class matches, "
    "NLTK word positions used as token positions), for their checkpoints; --mode fiacli (default) "
    "fixes them. --tagger auto uses NLTK's averaged_perceptron_tagger_eng when installed, else an "
    "offline tagger that needs no download.\n\n"
    "--classes FILE: one class name per line, '#' starts a comment. -i FILE: one expression per "
    "line; blank lines and lines starting with '#' are skipped."
)


def _settings(
    dataset: DatasetName | None,
    classes: Path | None,
    mode: ParseMode,
    token_length: int | None,
    tokenizer: str | None,
) -> ParseSettings:
    from fiacli.text.parsing import read_class_file

    settings = ParseSettings.for_dataset(
        dataset or DEFAULT_DATASET,
        mode=mode,
        token_length=token_length,
        tokenizer=tokenizer,
    )
    if classes is not None:
        settings = ParseSettings(
            mode=settings.mode,
            classes=read_class_file(classes),
            token_length=settings.token_length,
            tokenizer=settings.tokenizer,
        )
    return settings


def _show(parsed: ParsedExpression, vocabulary: str) -> None:
    """The parts as a two-column table, then one row per token with its three marks."""
    from rich.table import Table
    from rich.text import Text

    from fiacli.core.console import console

    s = parsed.settings
    parts = Table.grid(padding=(0, 2))
    parts.add_column(style="bold")
    parts.add_column()
    parts.add_row("context", parsed.text)
    parts.add_row(
        "ground object",
        ", ".join(parsed.objects)
        or Text(f"(none: no class of the {vocabulary} vocabulary occurs)", style="yellow"),
    )
    parts.add_row(
        "spatial position",
        ", ".join(parsed.positions)
        or Text("(none found: the position mask is the whole sentence)", style="yellow"),
    )
    parts.add_row(
        "settings",
        f"{s.mode} mode, {vocabulary} vocabulary ({len(s.classes)} classes), "
        f"{s.token_length} tokens, {s.tokenizer}, {parsed.tagger} tagger",
    )
    console.print(parts)

    masks = (parsed.context_mask, parsed.object_mask, parsed.position_mask)
    last = max(k for mask in masks for k, v in enumerate(mask) if v)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("#", "right"), ("token", "left"), ("id", "right"), ("context", "center"),
                          ("object", "center"), ("position", "center")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    tokens = parsed.tokens
    for k in range(last + 1):
        marks = ["[green]■[/green]" if mask[k] else "[dim]·[/dim]" for mask in masks]
        table.add_row(str(k), tokens[k], str(parsed.input_ids[k]), *marks)
    console.print(table)
    if s.mode == "released":
        console.print(
            "[dim]released mode: marks sit at NLTK word positions + 1, so a word split into "
            "several WordPieces shifts the marks after it (as in the released code).[/dim]"
        )


def _note_offline_released(parsed: ParsedExpression, tagger: TaggerName) -> None:
    """Released masks are exact only with NLTK's tagger; say so when auto had to fall back."""
    from fiacli.core.console import info

    if parsed.settings.mode == "released" and parsed.tagger == "offline" and tagger == "auto":
        info(
            "note: NLTK's averaged_perceptron_tagger_eng is not installed, so the offline tagger "
            "ran; it matches NLTK's spatial phrases on about 98-99% of expressions (see README)"
        )


def _batch(
    expressions: list[str], settings: ParseSettings, tagger: str, output: Path
) -> list[ParsedExpression]:
    from fiacli.core.console import progress
    from fiacli.text.parsing import parse_many, write_parse_cache

    unique = list(dict.fromkeys(expressions))
    parsed: list[ParsedExpression] = []
    with progress() as bar:
        task = bar.add_task("parsing", total=len(unique))
        for start in range(0, len(unique), 256):
            chunk = unique[start : start + 256]
            parsed += parse_many(chunk, settings, tagger=tagger)
            bar.advance(task, len(chunk))
    write_parse_cache(output, parsed)
    return parsed


def _summary(parsed: list[ParsedExpression], output: Path, vocabulary: str) -> dict[str, Any]:
    return {
        "output": str(output),
        "expressions": len(parsed),
        "with_object": sum(bool(p.objects) for p in parsed),
        "with_position": sum(not p.position_fallback for p in parsed),
        "position_fallback": sum(p.position_fallback for p in parsed),
        "truncated": sum(p.truncated is not None for p in parsed),
        "mode": parsed[0].settings.mode,
        "vocabulary": vocabulary,
        "token_length": parsed[0].settings.token_length,
        "tagger": parsed[0].tagger,
    }


@command(
    "parse",
    help=HELP,
    epilog=examples(
        'fiacli parse "the white van on the left road" --dataset refsegrs',
        'fiacli parse "the storage tank on the lower left" --mode released --json',
        "fiacli parse -i expressions.txt -o parsed.jsonl --dataset rrsisd",
        "fiacli parse --dataset rrsisd --data-root data/rrsisd --split test -o parsed.jsonl",
        'fiacli parse "the silo near the barn" --classes my_classes.txt --tagger offline',
    ),
)
def parse(
    expression: Annotated[
        str | None,
        typer.Argument(help="The referring expression, e.g. 'the ship on the left'."),
    ] = None,
    *,
    dataset: Annotated[
        DatasetName | None,
        typer.Option(
            help=f"Class vocabulary and token budget of this dataset (default: {DEFAULT_DATASET})."
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            help="Own class vocabulary: one class per line, '#' comments.", dir_okay=False
        ),
    ] = None,
    mode: Annotated[
        ParseMode, typer.Option(help="fiacli (quirks fixed) or released (the authors' parser).")
    ] = "fiacli",
    tagger: Annotated[
        TaggerName, typer.Option(help="POS tagger (auto: NLTK's when installed, else offline).")
    ] = "auto",
    token_length: Annotated[
        int | None,
        typer.Option(
            min=3,
            help="Token budget (default: "
            + ", ".join(f"{d.token_length} {d.name}" for d in DATASETS.values())
            + ").",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="WordPiece tokenizer: name, folder or vocab.txt "
            f"(default: {ParseSettings.tokenizer})."
        ),
    ] = None,
    input: Annotated[
        Path | None,
        typer.Option(
            "-i",
            "--input",
            help="UTF-8 text file, one expression per line ('#' starts a comment line).",
            dir_okay=False,
        ),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Dataset folder: parse a whole split (needs --dataset).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to parse with --data-root.")] = "test",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="JSONL parse cache to write (batch).")
    ] = None,
    overwrite: Overwrite = False,
    json: JsonOutput = False,
) -> None:
    from fiacli.core.console import clip, info, print_json, warn
    from fiacli.core.errors import UsageError
    from fiacli.core.io import check_output_path, refuse_overwriting_inputs
    from fiacli.text.parsing import parse as parse_one
    from fiacli.text.parsing import read_expression_file

    sources = [expression is not None, input is not None, data_root is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one of: an EXPRESSION, -i/--input FILE, --data-root DIR")
    if data_root is not None and dataset is None:
        raise UsageError(f"--data-root needs --dataset ({', '.join(DATASETS)})")
    if expression is None and output is None:
        raise UsageError("batch parsing needs -o/--output FILE.jsonl")
    settings = _settings(dataset, classes, mode, token_length, tokenizer)
    vocabulary = "custom" if classes else (dataset or DEFAULT_DATASET)

    if expression is not None:
        parsed = parse_one(expression, settings, tagger=tagger)
        _note_offline_released(parsed, tagger)
        if parsed.truncated:
            warn(f"longer than {settings.token_length} tokens; cut: {clip(parsed.truncated)!r}")
        if json:
            print_json({**parsed.to_dict(), "tokens": parsed.tokens})
        else:
            _show(parsed, vocabulary)
        return

    assert output is not None
    tokenizer_file = Path(tokenizer) if tokenizer and Path(tokenizer).is_file() else None
    refuse_overwriting_inputs([output], [input, classes, tokenizer_file])  # -f or not
    if output.suffix.lower() not in (".jsonl", ".json"):  # a .csv would hold JSON lines
        raise UsageError(
            f"-o writes the parse cache as JSON lines; give a .jsonl path, not {output}"
        )
    check_output_path(output, overwrite=overwrite)  # refuse before any work
    if input is not None:
        expressions = read_expression_file(input)
    else:
        try:
            from fiacli.training.datasets import load_expressions
        except ImportError as exc:
            raise UsageError(f"dataset loading is unavailable in this install ({exc})") from exc
        expressions = load_expressions(dataset, data_root, split)  # type: ignore[arg-type]
    parsed = _batch(expressions, settings, tagger, output)
    _note_offline_released(parsed[0], tagger)
    cut = [p for p in parsed if p.truncated]
    if cut:
        warn(
            f"{len(cut)} expression(s) longer than {settings.token_length} tokens were cut, "
            f"e.g. {clip(cut[0].text)!r} lost {clip(cut[0].truncated, 60)!r}"
        )
    summary = _summary(parsed, output, vocabulary)
    if json:
        print_json(summary)
    else:
        info(
            f"parsed {summary['expressions']} expressions ({summary['mode']} mode, "
            f"{vocabulary} vocabulary, {summary['tagger']} tagger): "
            f"{summary['with_object']} with a ground object, {summary['with_position']} with "
            f"a spatial phrase, {summary['position_fallback']} falling back to the whole "
            f"sentence, {summary['truncated']} cut -> {output}"
        )
