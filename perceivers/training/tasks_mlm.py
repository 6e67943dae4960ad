"""Task of the ``mlm`` recipe: byte-level masked language modelling with a Perceiver IO language model on the
Python standard library's sources (the ``text`` recipe's corpus and split, :mod:`perceivers.data.text`), masked by
one of the schemes of :mod:`perceivers.data.mlm` (``masking``: ``bytes``, ``spans`` or the paper's ``words``).

The result is a folder that ``perceivers fill-mask --checkpoint runs/mlm/model`` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.core.files import atomic_write
from perceivers.core.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    fail,
)
from perceivers.data.mlm import (
    MASKINGS,
    WHITESPACE,
    MLMWindows,
    apply_mask,
    draw_mask,
    evaluation_batch,
)
from perceivers.data.text import VALIDATION_MODULUS, TextCorpus, load_corpus
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import TextPreprocessorConfig
from perceivers.tokenizers import MASK_ID, NUM_SPECIAL, VOCAB_SIZE, BytesTokenizer
from perceivers.training.task import Task, model_config

#: ``describe()``'s words for each masking scheme.
MASKING_DESCRIPTIONS = {"bytes": "single word bytes (whitespace never masked)",
                        "spans": "runs of {k} bytes (whitespace inside a run left unmasked)",
                        "words": "whole whitespace-delimited words (Perceiver IO §4.1)"}

#: What the mlm task trains and ``perceivers eval mlm`` scores.
MLM_MODEL = f"byte-level Perceiver IO masked language model ({VOCAB_SIZE} ids)"


def is_byte_mlm(config: Any) -> bool:
    """Whether ``config`` is a :data:`MLM_MODEL` (what ``perceivers fill-mask`` reads)."""
    return (isinstance(config, PerceiverIOConfig) and isinstance(config.preprocessor, TextPreprocessorConfig)
            and config.decoder.type == "basic" and config.preprocessor.vocab_size >= VOCAB_SIZE)


@lru_cache(maxsize=2)
def text_corpus(root: str | None, include_tests: bool) -> TextCorpus:
    """The ``text`` recipe's corpus, read once per process."""
    return load_corpus(root, include_tests=include_tests)


def most_frequent_word_byte(stream: Tensor) -> int:
    """The ``BytesTokenizer`` id of the most frequent non-whitespace byte of a text stream (byte + 3 ids): the
    baseline's constant prediction (masked bytes are never whitespace)."""
    counts = torch.bincount(stream.long(), minlength=259)[3:].clone()  # (256,) per byte value
    counts[list(WHITESPACE)] = 0
    return int(counts.argmax()) + NUM_SPECIAL


@dataclass(frozen=True, kw_only=True)
class MLMTask(Task):
    """Masked-byte prediction on windows of ``length`` bytes (default: the model's ``max_seq_len``): bytes masked
    by ``masking`` with ``mask_prob``, cross-entropy on the masked bytes plus ``unmasked_weight`` times that on the
    unmasked bytes. Evaluation: masked-byte accuracy on ``eval_windows`` fixed windows of the held-out files (masks
    drawn by the same scheme from ``eval_seed``), beside the accuracy of always predicting the training text's most
    frequent non-whitespace byte."""

    name: ClassVar[str] = "mlm"
    model_kind: ClassVar[str] = MLM_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO masked byte LM (perceiver-io-mlm-stdlib, perceiver-io-language-mlm, ...)",
        "length": "window length in bytes (None: the model's max_seq_len)",
        "masking": "what is masked: bytes (each word byte alone), spans (runs of span_length bytes) or words "
                   "(whole whitespace-delimited words, the paper's)",
        "mask_prob": "share of the masked bytes (words: probability that a word is masked; paper: 0.15)",
        "span_length": "masking=spans: bytes per masked run",
        "unmasked_weight": "weight of an added loss on reconstructing the unmasked bytes (it teaches the latents "
                           "where each byte is; 0: the paper's loss on the masked bytes only)",
        "eval_windows": "number of fixed held-out windows scored", "eval_seed": "seed of the held-out masks",
        "data_root": "folder of *.py files to train on (None: this Python's standard library)",
        "include_tests": "also read the standard library's test suites"}

    model: str = "perceiver-io-mlm-stdlib"
    length: int | None = None
    masking: str = "bytes"
    mask_prob: float = 0.15
    span_length: int = 3
    unmasked_weight: float = 0.5
    eval_windows: int = 1024
    eval_seed: int = 1234
    data_root: str | None = None
    include_tests: bool = False

    def __post_init__(self) -> None:
        check_optional_int("length", self.length, minimum=2)
        if not isinstance(self.mask_prob, (int, float)) or isinstance(self.mask_prob, bool) \
                or not 0 < self.mask_prob <= 1:
            fail("mask_prob", self.mask_prob, "a probability in (0, 1]")
        check_choice("masking", self.masking, MASKINGS)
        check_int("span_length", self.span_length)
        check_float("unmasked_weight", self.unmasked_weight, minimum=0.0)
        check_int("eval_windows", self.eval_windows)
        check_int("eval_seed", self.eval_seed, minimum=0)
        check_bool("include_tests", self.include_tests)

    def fits(self, config: Any) -> bool:
        return is_byte_mlm(config)

    def for_model(self, model: nn.Module) -> MLMTask:
        """This task at the loaded model's length."""
        super().for_model(model)  # ConfigError unless the model fits
        length = model.config.preprocessor.max_seq_len
        task = dataclasses.replace(self, length=length)
        task.__dict__["window"] = length  # the loaded model's, whatever the registered --model reads
        return task

    @cached_property
    def window(self) -> int:
        """The window length (validated against the model's ``max_seq_len``)."""
        limit = model_config("model", self.model, is_byte_mlm, MLM_MODEL).preprocessor.max_seq_len
        if self.length is not None and self.length > limit:
            fail("length", self.length, f"at most the model's max_seq_len {limit}")
        return self.length or limit

    def corpus(self) -> TextCorpus:
        return text_corpus(self.data_root, self.include_tests)

    def build_model(self) -> nn.Module:
        _ = self.window  # fail early on a model of another family or a too long window
        return create_model(self.model)

    def train_dataset(self, seed: int) -> Dataset:
        return MLMWindows(self.corpus().train, length=self.window)

    def training_loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        mask = self.draw_mask(batch)  # the global RNG (seeded and checkpointed by the engine)
        logits = model(apply_mask(batch, mask))  # (B, L, V)
        if not bool(mask.any()):  # a batch without a masked byte: a zero loss that still reaches the graph
            return logits.float().sum() * 0.0, {"masked_accuracy": 0.0}
        picked, targets = logits[mask].float(), batch[mask]  # (M, V), (M,)
        accuracy = float((picked.argmax(-1) == targets).float().mean())
        loss = F.cross_entropy(picked, targets)
        metrics = {"masked_accuracy": accuracy, "masked_loss": float(loss.detach())}
        kept = ~mask & (batch >= NUM_SPECIAL)  # (B, L): the bytes left as they are
        if self.unmasked_weight > 0 and bool(kept.any()):
            unmasked = F.cross_entropy(logits[kept].float(), batch[kept])
            loss = loss + self.unmasked_weight * unmasked
            metrics["unmasked_loss"] = float(unmasked.detach())
        return loss, metrics

    def draw_mask(self, ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The ``masking`` scheme's boolean mask ``(B, L)`` of ``ids (B, L)``."""
        return draw_mask(ids, self.masking, self.mask_prob, generator, span_length=self.span_length)

    def held_out(self) -> tuple[Tensor, Tensor]:
        """The held-out windows ``(K, length)`` and their fixed masks (the same scheme as training)."""
        return evaluation_batch(self.corpus().validation, num_windows=self.eval_windows, length=self.window,
                                mask_prob=self.mask_prob, seed=self.eval_seed, masking=self.masking,
                                span_length=self.span_length)

    @torch.no_grad()
    def predict(self, model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        """The model's byte (never a special id) at every position of ``ids (K, L)`` with ``mask`` applied."""
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        out = torch.cat([model(apply_mask(ids[i:i + 32], mask[i:i + 32]).to(device))[..., NUM_SPECIAL:]
                         .argmax(-1).cpu() + NUM_SPECIAL for i in range(0, len(ids), 32)])
        model.train(was_training)
        return out  # (K, L)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        ids, mask = self.held_out()
        correct = self.predict(model, ids, mask)[mask] == ids[mask]
        baseline = most_frequent_word_byte(self.corpus().train)
        return {"masked_byte_accuracy": float(correct.float().mean()), "num_masked_bytes": int(mask.sum()),
                "baseline_accuracy": float((ids[mask] == baseline).float().mean()),
                "baseline_byte": BytesTokenizer().decode([baseline])}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """``samples.txt``: held-out windows as masked, as filled by the model and as written."""
        ids, mask = self.held_out()
        filled = torch.where(mask, self.predict(model, ids, mask), ids)
        tok, blocks = BytesTokenizer(), []
        show = {MASK_ID: "_"}
        for k in range(min(4, len(ids))):
            masked = "".join(show.get(int(i), tok.decode([int(i)])) for i in apply_mask(ids[k], mask[k]))
            blocks.append(f"--- masked (_ = one masked byte)\n{masked}\n--- filled by the model\n"
                          f"{tok.decode(filled[k])}\n--- original\n{tok.decode(ids[k])}\n")
        atomic_write(out_dir / "samples.txt", lambda p: Path(p).write_text("\n".join(blocks), encoding="utf-8"))

    def describe(self) -> dict[str, Any]:
        c = self.corpus()
        return {"recipe": "mlm", "model": self.model, "length": self.window, "mask_prob": self.mask_prob,
                "masking": MASKING_DESCRIPTIONS[self.masking].format(k=self.span_length),
                "unmasked_weight": self.unmasked_weight,
                "eval_windows": self.eval_windows,
                "eval_seed": self.eval_seed,
                "split": {"rule": f"sha256(relative path)[:8] big-endian % {VALIDATION_MODULUS} == 0 -> validation",
                          "train_files": len(c.train_files), "validation_files": len(c.validation_files),
                          "include_tests": self.include_tests}}

    def summary(self, result: dict[str, Any]) -> str:
        return (f"held-out masked-byte accuracy: {result['masked_byte_accuracy']:.4f} over "
                f"{result['num_masked_bytes']:,} bytes (always {result['baseline_byte']!r}: "
                f"{result['baseline_accuracy']:.4f}), trained in {result['train_seconds']:.0f} s")
