"""``fiacli convert``: the authors' released FIANet checkpoints ↔ fiacli's safetensors format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fiacli.cli.common import command, examples
from fiacli.cli.options import JsonOutput, Overwrite
from fiacli.core.datasets import ReleasedDatasetName


@command(
    "convert",
    short_help="Convert a released FIANet .pth into a fiacli checkpoint (or back).",
    help=(
        "Convert the authors' released FIANet checkpoint into a fiacli checkpoint.\n\n"
        "The .pth is read without running any pickled code (only tensors, plain data and "
        "argparse.Namespace are accepted). Every released tensor must map to exactly one "
        "fiacli tensor, or the conversion stops and lists the keys. The architecture (Swin "
        "size and window, num_tmem, decoder width, BERT size) is read from tensor shapes, and "
        "the parse mode is set to 'released' so expressions are parsed as in training.\n\n"
        "Where the trained checkpoints are: not in the authors' GitHub repository (its README "
        "links only the weights training starts from). The authors shared them in issue #11 of "
        "github.com/Shaosifan/FIANet, as a BaiduNetDisk share "
        "(pan.baidu.com/s/1WgvKFn9nXiny1pzcvVJjwQ, extraction code 65g4); download the .pth for "
        "your dataset there and convert it once."
    ),
    epilog=examples(
        "fiacli convert refsegrs_best.pth -o fianet-refsegrs.safetensors",
        "fiacli convert rrsisd_best.pth -o fianet-rrsisd.safetensors --json",
        "fiacli convert fianet-refsegrs.safetensors --to released -o check.pth",
    ),
)
def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="A released FIANet checkpoint (a .pth written by the authors' train.py, such as "
            "their trained models: see above), or a fiacli checkpoint with --to released.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="File to write.", show_default=False),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Target layout: 'fiacli' (.safetensors with everything needed to use the "
            "model) or 'released' (the authors' key names; .pth or .safetensors).",
            metavar="fiacli|released",
        ),
    ] = "fiacli",
    dataset: Annotated[
        ReleasedDatasetName | None,
        typer.Option(
            help="Dataset the checkpoint was trained on: sets the class vocabulary and token "
            "length. Default: the checkpoint's own args.",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    text_heads: Annotated[
        int | None,
        typer.Option(
            help="BERT attention heads, for unusual text encoders only (weights do not "
            "record it; bert-base is recognised).",
            min=1,
            show_default=False,
        ),
    ] = None,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    from fiacli.core.console import console, print_json
    from fiacli.models.convert import convert_checkpoint  # checks --to against TO_CHOICES

    result = convert_checkpoint(
        source,
        output,
        to=to,
        overwrite=overwrite,
        dataset=dataset,
        text_heads=text_heads,
    )
    cfg = result.config
    summary = {
        "output": str(result.output),
        "to": result.to,
        "tensors": result.tensors,
        "parameters": result.parameters,
        "swin": {
            "embed_dim": cfg.embed_dim,
            "depths": list(cfg.depths),
            "num_heads": list(cfg.num_heads),
            "window_size": cfg.window_size,
        },
        "num_tmem": cfg.num_tmem if cfg.tmem else 0,
        "decoder_width": cfg.decoder_width,
        "text_encoder": {"identity": cfg.text_encoder, "hidden_size": cfg.text_dim},
        "image_size": cfg.image_size,
        "parse": result.parse,
        "notes": result.notes,
    }
    if json_output:
        print_json(summary)
        return
    parse = result.parse or {}
    console.print(
        f"wrote {result.output} ({result.to} layout, {result.tensors} tensors, "
        f"{result.parameters / 1e6:.1f} M parameters)\n"
        f"  Swin embed {cfg.embed_dim}, depths {'-'.join(map(str, cfg.depths))}, window "
        f"{cfg.window_size}; num_tmem {summary['num_tmem']}; decoder {cfg.decoder_width}; "
        f"text encoder {cfg.text_encoder} (width {cfg.text_dim})\n"
        f"  parse: mode {parse.get('mode')}, {len(parse.get('classes', []))} classes, "
        f"{parse.get('token_length')} tokens",
        highlight=False,
        soft_wrap=True,
    )
