"""`fiacli data check` and `fiacli data synth`: validate a download, generate synthetic data."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fiacli.cli.common import examples, new_app
from fiacli.cli.options import DataRoot, JsonOutput
from fiacli.core.datasets import DATASETS, SYNTH, DatasetChoice

if TYPE_CHECKING:
    from rich.console import Console

    from fiacli.training.dataset_check import DatasetChecker


MAX_ROWS_PER_KIND = 20
_PUBLISHED = [d.name for d in DATASETS.values() if d.published_counts]
_UNPUBLISHED = [d.name for d in DATASETS.values() if not d.published_counts]


data_app = new_app(
    help="Dataset tools: validate a download, generate synthetic data.",
    epilog=examples(
        "fiacli data check --dataset rrsisd --data-root data/rrsisd",
        "fiacli data synth -o synth",
    ),
)


@data_app.command(
    "check",
    epilog=examples(
        "fiacli data check --dataset rrsisd --data-root ~/data/RRSIS-D",
        "fiacli data check --dataset refsegrs --data-root ~/data/RefSegRS --quick",
        "fiacli data check --data-root my_scenes --json > report.json",
    ),
)
def check(
    data_root: DataRoot,
    dataset: Annotated[
        DatasetChoice,
        typer.Option(
            "--dataset",
            "-d",
            help=f"{' / '.join(_PUBLISHED)} compare split sizes with the published ones; "
            f"{', '.join(_UNPUBLISHED)} and auto (custom data, layout detected) do not.",
        ),
    ] = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="Read image headers only; do not decode pixels.")
    ] = False,
    skip_archives: Annotated[
        bool,
        typer.Option("--skip-archives", help="Do not test .zip/.tar files found in the root."),
    ] = False,
    show_all: Annotated[
        bool,
        typer.Option("--all", help=f"List every problem (default: {MAX_ROWS_PER_KIND} per kind)."),
    ] = False,
    json_out: JsonOutput = False,
) -> None:
    """Validate a dataset before training (exit code 1 if any error).

    Checks the layout, archives found in the root, the refs pickle (plain types only), every
    image and mask (missing, undecodable, sizes differing), empty masks and the split sizes,
    and lists every problem in one table.
    """
    from fiacli.core.console import console, print_json, progress
    from fiacli.training.dataset_check import ERROR, DatasetChecker

    checker = DatasetChecker(dataset, data_root, deep=not quick, archives=not skip_archives)
    with progress(transient=True) as bar:
        task = bar.add_task("indexing", total=None)
        checker.index()
        bar.update(task, description="checking samples", total=len(checker.records))
        for rec in checker.records:
            checker.check_record(rec)
            bar.advance(task)
    problems = checker.problems
    errors = sum(p.severity == ERROR for p in problems)
    if json_out:
        print_json(
            {
                "dataset": dataset,
                "root": str(data_root),
                "layout": checker.layout,
                "splits": checker.counts,
                "errors": errors,
                "warnings": len(problems) - errors,
                "problems": [p.to_dict() for p in problems],
            }
        )
    else:
        _print_report(console, checker, show_all)
    if errors:
        from fiacli.core.errors import FiacliError

        first = next(p for p in problems if p.severity == ERROR)
        more = f" ({errors} errors in all)" if errors > 1 else ""
        raise FiacliError(f"{data_root} is not ready for training: {first.message}{more}")


@data_app.command(
    "synth",
    epilog=examples(
        "fiacli data synth -o synth",
        "fiacli data synth -o tiny --train 64 --val 16 --test 16 --size 240 --seed 1",
        'fiacli data synth -o tanks --objects "storage tank,vehicle,ship"',
    ),
)
def synth(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder to create (RRSIS-D layout).")
    ],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    train: Annotated[int, typer.Option("--train", help="Refs in the train split.")] = 600,
    val: Annotated[int, typer.Option("--val", help="Refs in the val split.")] = 100,
    test: Annotated[int, typer.Option("--test", help="Refs in the test split.")] = 100,
    size: Annotated[int, typer.Option("--size", help="Scene side in pixels.")] = 320,
    objects: Annotated[
        list[str] | None,
        typer.Option(
            "--objects",
            metavar="CLASSES",
            help="Object classes, comma-separated or repeated; default: all of "
            f"{', '.join(SYNTH.scene_classes)}.",
        ),
    ] = None,
    refs_per_scene: Annotated[
        int, typer.Option("--refs-per-scene", help="Refs (different targets) per scene.")
    ] = 3,
    max_objects: Annotated[
        int, typer.Option("--max-objects", help="Most objects in a scene (2–9).")
    ] = 4,
    position_only: Annotated[
        float,
        typer.Option(
            "--position-only",
            help="Share of scenes with two identical objects told apart only by place.",
        ),
    ] = 0.3,
    overwrite: Annotated[
        bool,
        typer.Option(
            "-f", "--overwrite", help="Replace OUTPUT if it is an earlier synthetic dataset."
        ),
    ] = False,
    json_out: JsonOutput = False,
) -> None:
    """Generate a synthetic referring dataset in the RRSIS-D layout.

    Aerial-looking scenes with objects of the RRSIS-D vocabulary, same-class distractors and
    RRSIS-D-style expressions; some scenes hold two identical objects told apart only by the
    spatial phrase (flagged position_only). For tests, demos and CPU learning checks: train on
    it with `fiacli train --dataset synth`.
    """
    from fiacli.core.console import console, info, print_json, progress
    from fiacli.training.synth import generate_synth

    classes = [c.strip() for item in objects or [] for c in item.split(",") if c.strip()]
    counts = {"train": train, "val": val, "test": test}
    scenes = sum(math.ceil(n / max(refs_per_scene, 1)) for n in counts.values())
    start = time.perf_counter()
    with progress(transient=True) as bar:
        task = bar.add_task("drawing scenes", total=scenes)
        summary = generate_synth(
            output,
            seed=seed,
            counts=counts,
            size=size,
            classes=classes or SYNTH.scene_classes,
            refs_per_scene=refs_per_scene,
            position_only_fraction=position_only,
            max_objects=max_objects,
            overwrite=overwrite,
            on_scene=lambda: bar.advance(task),
        )
    seconds = time.perf_counter() - start
    if json_out:
        print_json({**summary.to_dict(), "seconds": round(seconds, 2)})
        return
    from rich.table import Table

    table = Table(title=f"{output} (RRSIS-D layout, {size}² px, seed {seed})")
    for col in ("split", "scenes", "refs", "position-only refs"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in summary.refs:
        table.add_row(
            split,
            f"{summary.scenes[split]:,}",
            f"{summary.refs[split]:,}",
            f"{summary.position_only[split]:,}",
        )
    console.print(table)
    info(
        f"{sum(summary.scenes.values())} scenes in {seconds:.1f} s; train on it with "
        f"`fiacli train --dataset synth --data-root {output}`"
    )


def _print_report(console: Console, checker: DatasetChecker, show_all: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from fiacli.training.dataset_check import ERROR

    facts = DATASETS.get(checker.dataset)  # type: ignore[call-overload]
    published = facts.published_counts if facts is not None else {}
    splits = Table(title=f"{checker.root} ({checker.layout or 'layout not recognised'})")
    # paths in the problem rows are relative to this root
    splits.add_column("split")
    splits.add_column("refs", justify="right")
    splits.add_column("published", justify="right")
    for split in dict.fromkeys([*checker.counts, *published]):
        pub = published.get(split)
        splits.add_row(
            split, f"{checker.counts.get(split, 0):,}", f"{pub:,}" if pub is not None else "—"
        )
    if checker.counts or published:
        console.print(splits)
    problems = checker.problems
    errors = sum(p.severity == ERROR for p in problems)
    if problems:
        table = Table(title="Problems", show_lines=False)
        table.add_column("severity", no_wrap=True)
        table.add_column("kind", no_wrap=True)
        table.add_column("where", overflow="fold")
        table.add_column("problem", overflow="fold")
        by_kind: dict[str, list] = {}
        for p in sorted(problems, key=lambda p: p.severity != ERROR):  # errors first
            by_kind.setdefault(p.kind, []).append(p)
        for kind, rows in by_kind.items():
            for p in rows if show_all else rows[:MAX_ROWS_PER_KIND]:
                style = "red" if p.severity == ERROR else "yellow"
                table.add_row(
                    f"[{style}]{p.severity}[/{style}]", kind, escape(p.where), escape(p.message)
                )
            if not show_all and len(rows) > MAX_ROWS_PER_KIND:
                more = len(rows) - MAX_ROWS_PER_KIND
                table.add_row("", kind, "…", f"{more:,} more {kind} problems (--all lists them)")
        console.print(table)
    n = len(checker.records)
    verdict = "[green]ready to train[/green]" if not errors else "[red]fix the errors first[/red]"
    console.print(
        f"checked {n:,} samples: {errors} error(s), {len(problems) - errors} warning(s) — {verdict}"
    )
