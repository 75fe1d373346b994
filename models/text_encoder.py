"""Text side of FIANet: the token batch, the encoded features, and the BERT wrapper.

FIANet reads one expression three times: the whole sentence (*context*), the ground-object words and
the spatial-position words. The released code runs BERT three times on the same ids, once per mask.
:class:`TextEncoder` does the same in one batched call, and :class:`TextFeatures` keeps the
result so that one expression can be reused for every chip of a scene.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import nn

# The BertConfig fields that define the architecture; enough to rebuild the encoder offline.
BERT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)

BERT_BASE_UNCASED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}


class _ParsedLike(Protocol):
    input_ids: Sequence[int]
    context_mask: Sequence[int]
    object_mask: Sequence[int]
    position_mask: Sequence[int]


@dataclass
class TextBatch:
    """Token ids and the three 0/1 masks of a batch of parsed expressions, each ``(B, N)`` int.

    ``context_mask`` is the ordinary attention mask of the sentence, ``object_mask`` marks the
    ground-object words, ``position_mask`` the spatial-position words (released names: ``l_mask``,
    ``t_mask``, ``p_mask``).
    """

    input_ids: torch.Tensor
    context_mask: torch.Tensor
    object_mask: torch.Tensor
    position_mask: torch.Tensor

    @classmethod
    def from_parsed(cls, parsed: Iterable[_ParsedLike]) -> TextBatch:
        """Stack parsed expressions (``fiacli.text.parsing.ParsedExpression``) into one batch."""
        items = list(parsed)
        if not items:
            raise ValueError("TextBatch.from_parsed needs at least one parsed expression")
        cols = [
            torch.tensor([list(getattr(p, f.name)) for p in items], dtype=torch.long)
            for f in fields(cls)
        ]
        return cls(*cols)

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> TextBatch:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextBatch(*(getattr(self, f.name)[index] for f in fields(self)))


@dataclass
class TextFeatures:
    """BERT's last hidden states for the three masks, each ``(B, N, D)``, plus the masks ``(B, N)``.

    Computing these is the only text work FIANet does; keep them to segment many images with one
    expression. A batch of one broadcasts to any image batch (see :meth:`expand`).
    """

    context: torch.Tensor
    object: torch.Tensor
    position: torch.Tensor
    context_mask: torch.Tensor
    object_mask: torch.Tensor
    position_mask: torch.Tensor

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move to ``device``; ``dtype`` applies to the hidden states only (masks stay integer)."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            floating = not f.name.endswith("mask")
            out[f.name] = t.to(device=device, dtype=dtype if floating else None)
        return TextFeatures(**out)

    def __getitem__(self, index: int | slice | torch.Tensor) -> TextFeatures:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextFeatures(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def expand(self, batch_size: int) -> TextFeatures:
        """Repeat a single expression for ``batch_size`` images (a view, no copy)."""
        if len(self) == batch_size:
            return self
        if len(self) != 1:
            raise ValueError(
                f"text features hold {len(self)} expressions; cannot match a batch of {batch_size}"
            )
        return TextFeatures(
            **{
                f.name: getattr(self, f.name).expand(batch_size, *getattr(self, f.name).shape[1:])
                for f in fields(self)
            }
        )

    def detach(self) -> TextFeatures:
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self)})


def bert_config(text_config: dict[str, Any]):
    """A ``transformers.BertConfig`` from fiacli's plain-dict description of the encoder."""
    from transformers import BertConfig

    return BertConfig(**{k: text_config[k] for k in BERT_FIELDS if k in text_config})


class TextEncoder(nn.Module):
    """HF ``BertModel`` (no pooler) run once on the three masks of each expression.

    The three passes are stacked along the batch dimension: each sequence is processed
    independently by BERT, so one call of batch ``3B`` equals three calls of batch ``B``.

    A mask that is all zero (no object word found) is replaced by all ones. The released code ran
    HF 3.0.2, which adds -10000 to every logit of such a row, which cancels in the softmax and
    equals an unmasked pass; modern HF would give uniform attention instead. The row is zeroed in
    the fusion either way, so this only matters for inspecting the features.

    Args:
        text_config: BertConfig fields (see ``BERT_FIELDS``); ``hidden_size`` is the text width.
        frozen: keep BERT in eval mode without gradients (its features can then be cached).
    """

    def __init__(self, text_config: dict[str, Any], *, frozen: bool = False):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(bert_config(text_config), add_pooling_layer=False)
        self.frozen = frozen
        if frozen:
            self.bert.requires_grad_(False)
            self.bert.eval()

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.bert.eval()  # no dropout in a frozen encoder: its features are deterministic
        return self

    def forward(self, text: TextBatch) -> TextFeatures:
        check_token_ids(text.input_ids, self.bert.config)
        masks = torch.stack([text.context_mask, text.object_mask, text.position_mask]).long()
        empty = masks.sum(-1, keepdim=True) == 0
        attention = torch.where(empty, torch.ones_like(masks), masks)
        ids = text.input_ids.long().repeat(3, 1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.bert(input_ids=ids, attention_mask=attention.flatten(0, 1))
        context, obj, position = hidden.last_hidden_state.chunk(3)
        return TextFeatures(
            context, obj, position, text.context_mask, text.object_mask, text.position_mask
        )


# vocabulary size of the tokenizers fiacli serves offline (bert-base-uncased's WordPiece)
_BUNDLED_VOCAB_SIZE = 30522


def tokenizer_size(name: str) -> int | None:
    """How many ids ``name`` can produce (None when it cannot be loaded here: offline hub id)."""
    from fiacli.core.errors import FiacliError
    from fiacli.text.tokenizer import BUNDLED_NAMES, load_tokenizer

    if name in BUNDLED_NAMES:
        return _BUNDLED_VOCAB_SIZE
    try:
        return len(load_tokenizer(name))
    except (FiacliError, OSError, ValueError):
        return None


def check_token_ids(input_ids: torch.Tensor, config: Any) -> None:
    """Token ids past the embedding (or more tokens than position embeddings) are an IndexError
    deep inside BERT; say which limit the expression crossed instead."""
    from fiacli.core.errors import FiacliError

    if not input_ids.numel():
        return
    vocab = int(config.vocab_size)
    top = int(input_ids.max())
    if top >= vocab or int(input_ids.min()) < 0:
        raise FiacliError(
            f"the expression has token id {top}, outside the text encoder's vocabulary of "
            f"{vocab:,} tokens: the model's tokenizer does not match its text encoder"
        )
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions and input_ids.shape[-1] > positions:
        raise FiacliError(
            f"{input_ids.shape[-1]} tokens per expression, but the text encoder has only "
            f"{positions} position embeddings; lower the token length"
        )


def text_fit_problems(text_config: dict[str, Any], parse: dict[str, Any] | None) -> list[str]:
    """Why a text encoder cannot read everything its tokenizer produces (empty when it can).

    An embedding smaller than the tokenizer's vocabulary (or fewer position embeddings than the
    token budget) fails at the first expression that uses an id past it."""
    problems: list[str] = []
    if not parse:
        return problems
    vocab = int(text_config.get("vocab_size", 0) or 0)
    positions = int(text_config.get("max_position_embeddings", 0) or 0)
    name = str(parse.get("tokenizer") or "bert-base-uncased")
    needed = tokenizer_size(name)
    if vocab and needed is not None and needed > vocab:
        problems.append(
            f"its text encoder has a vocabulary of {vocab:,} tokens but its tokenizer "
            f"{name!r} has {needed:,}: an expression with a word past id {vocab - 1} will be "
            "refused (wrong tokenizer in the parse settings, or a truncated embedding)"
        )
    length = parse.get("token_length")
    if positions and isinstance(length, int) and length > positions:
        problems.append(
            f"its text encoder has {positions} position embeddings but its parse settings ask "
            f"for {length} tokens: expressions will be refused; lower the token length to at "
            f"most {positions}"
        )
    return problems
