"""The Perceiver IO model: preprocessor -> encoder -> decoder (+ the output stage the decoder needs).

One class builds every Perceiver IO task from a :class:`~perceivers.models.perceiver_io.config.PerceiverIOConfig`.
The task classes (:class:`~perceivers.models.perceiver_io.language.PerceiverIOLanguage`, ``PerceiverIOFlow``,
``PerceiverIOMultimodal``, ``PerceiverIOAudio``) are thin subclasses that only read their task's inputs
(``forward`` signatures) and add conveniences; they take the same config, and ``PerceiverIO(config)`` returns
the one the config's preprocessor names, so :func:`perceivers.from_pretrained` rebuilds the right class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from perceivers.core.registry import register_model_type
from perceivers.decoders import (
    BasicDecoder,
    ClassificationDecoder,
    EmbeddingDecoder,
    build_decoder,
)
from perceivers.decoders.multimodal import modality_postprocessors
from perceivers.encoders import PerceiverEncoder
from perceivers.layers.attention import check_mask
from perceivers.layers.init import init_linear_haiku
from perceivers.models.base import PerceiverModel, check_input_dtype
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.perceiver_io.legacy import LEGACY_MODEL_TYPES
from perceivers.preprocessors import build_preprocessor

#: Preprocessor tag (``None``: tokens) -> the class that reads that task's inputs.
TASK_CLASSES: dict[str | None, type[PerceiverIO]] = {}


def task_class(config: PerceiverIOConfig) -> type[PerceiverIO]:
    """The class of the model ``config`` describes (by its preprocessor's tag)."""
    return TASK_CLASSES[config.preprocessor_type]


class PerceiverIO(PerceiverModel, model_type="perceiver_io"):
    """A Perceiver IO model (or the original Perceiver, ``encoder.layout='interleaved'``).

    This class reads NCHW float images ``(B, C, H, W)`` (image preprocessor) or tokens ``(B, M,
    input_channels)`` (no preprocessor); outputs are ``(B, num_outputs)`` for classification / projection
    decoders and ``(B, O, num_outputs)`` for the basic decoder. ``PerceiverIO(config)`` with another
    preprocessor returns the task class that reads its inputs (see the module docstring).

    Modules: ``preprocessor``, ``encoder``, ``decoder``, and the decoder's output stage: ``embedding_decoder``
    (masked LM: logits from the byte embedding) or ``postprocessors`` (multimodal: one layer per modality).
    Construction declares parameters; :meth:`init_weights` applies the official initialisation and is called by
    ``__init__`` unless the parameters live on the meta device.
    """

    config_class = PerceiverIOConfig
    #: Preprocessor tags whose inputs this class reads.
    preprocessor_types: ClassVar[tuple[str | None, ...]] = (None, "image")

    def __init_subclass__(cls, *, preprocessor: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if preprocessor is not None:  # a task class: PerceiverIO(config) builds it for this preprocessor
            cls.preprocessor_types = (preprocessor,)
            TASK_CLASSES[preprocessor] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> PerceiverIO:
        config = args[0] if args else kwargs.get("config")
        if cls is PerceiverIO and isinstance(config, PerceiverIOConfig):
            cls = task_class(config)
        return super().__new__(cls)

    def __init__(self, config: PerceiverIOConfig) -> None:
        super().__init__(config)
        c = config
        if c.preprocessor_type not in self.preprocessor_types:
            raise ValueError(f"{type(self).__name__} cannot read the inputs of a {c.preprocessor_type!r} "
                             f"preprocessor; build PerceiverIO(config), which returns a {task_class(c).__name__}")
        self.preprocessor = build_preprocessor(c.preprocessor) if c.preprocessor is not None else None
        self.encoder = PerceiverEncoder(c.encoder, input_channels=c.input_channels, activation=c.activation)
        self.decoder = build_decoder(c.decoder, latent_channels=c.encoder.num_latent_channels,
                                     activation=c.activation, preprocessor=c.preprocessor,
                                     feature_channels=c.preprocessed_channels)
        self.embedding_decoder = EmbeddingDecoder(c.preprocessor.vocab_size) if c.is_mlm else None
        self.postprocessors = None
        if c.decoder.type == "multimodal":
            self.postprocessors = modality_postprocessors(c.preprocessor.modalities, c.decoder.num_output_channels)
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        """Official initialisation (fan-in truncated normal linears, 0.02 latents and tables, embedding std 1,
        zero embedding bias, zero flow head, Haiku-default output layers)."""
        for module in (self.preprocessor, self.encoder, self.decoder, self.embedding_decoder):
            if module is not None:
                module.init_weights()
        for layer in (self.postprocessors or {}).values():
            init_linear_haiku(layer)

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: images ``(B, C, H, W)`` in [0, 1) at ``image_size``, or
        tokens ``(B, M, input_channels)`` standard normal (``M`` = the decoder's queries when it concatenates the
        input, else 4)."""
        c, ref = self.config, self.encoder.latents
        if c.preprocessor is not None:
            x = torch.rand(batch_size, c.preprocessor.in_channels, *c.preprocessor.image_size, generator=generator)
        else:
            concat = c.decoder.type == "basic" and c.decoder.concat_preprocessed_input
            tokens = self.decoder.num_queries if concat else 4
            x = torch.randn(batch_size, tokens, c.input_channels, generator=generator)
        if getattr(c.decoder, "external_queries", False):  # the caller's decoder queries (lucidrains' PerceiverIO)
            queries = torch.randn(batch_size, 3, c.decoder.num_query_channels, generator=generator)
            return {"inputs": x.to(ref), "queries": queries.to(ref)}
        return {"inputs": x.to(ref)}

    def check_dtype(self, inputs: Tensor, name: str) -> None:
        """Floating inputs must match the parameters' dtype (or the autocast dtype under ``torch.autocast``)."""
        check_input_dtype(inputs, name, self.encoder.latents.dtype)

    def check_input_mask(self, input_mask: Tensor | None, tokens: Tensor, shape: str = "(B, M)") -> None:
        """``input_mask`` is ``None`` or a bool ``(B, M)`` matching ``tokens: (B, M, C)``."""
        b, m = tokens.shape[:2]
        check_mask(input_mask, batch=b, num_queries=self.config.encoder.num_latents, num_keys=m, name="input_mask")
        if input_mask is not None and input_mask.dim() != 2:
            raise ValueError(f"input_mask must have shape {shape}=({b}, {m}), got {tuple(input_mask.shape)}")

    def _tokens(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if self.preprocessor is not None:
            self.preprocessor.check_input(inputs)
            self.check_dtype(inputs, "images")
            tokens, feats, _ = self.preprocessor(inputs)
            return tokens, feats
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
        self.check_dtype(inputs, "inputs")
        if inputs.dim() != 3 or inputs.shape[-1] != self.config.input_channels:
            raise ValueError(f"inputs must have shape (B, M, {self.config.input_channels}), got {tuple(inputs.shape)}")
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise ValueError(f"inputs must be non-empty, got shape {tuple(inputs.shape)}")
        return inputs, inputs

    def forward_features(self, inputs: Tensor, input_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode: ``-> (latents (B, N, D), preprocessed input without positions (B, M, C_feat))``."""
        tokens, feats = self._tokens(inputs)
        self.check_input_mask(input_mask, tokens)
        return self.encoder(tokens, input_mask), feats

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None, *, query_mask: Tensor | None = None,
                subsampled_output_points: Tensor | None = None, queries: Tensor | None = None) -> Tensor:
        """``inputs`` -> logits / outputs (see class docstring).

        ``input_mask: (B, M)`` bool marks real input tokens (after preprocessing); ``query_mask:
        (B, O)`` and ``subsampled_output_points`` apply to the basic decoder only; ``queries: (O, C_q)`` or
        ``(B, O, C_q)`` are the decoder queries of a basic decoder with ``external_queries`` (required there).
        """
        if self.config.decoder.type != "basic" and (query_mask is not None or subsampled_output_points is not None):
            raise ValueError(f"query_mask and subsampled_output_points need a 'basic' decoder, "
                             f"this model has a {self.config.decoder.type!r} decoder")
        if queries is not None and not getattr(self.config.decoder, "external_queries", False):
            raise ValueError("queries need a basic decoder with external_queries=True; this model builds its own")
        z, feats = self.forward_features(inputs, input_mask)
        if isinstance(self.decoder, BasicDecoder) and not isinstance(self.decoder, ClassificationDecoder):
            if self.config.decoder.concat_preprocessed_input and feats.shape[1] != self.decoder.num_queries:
                raise ValueError(f"concat_preprocessed_input needs one query per input token: "
                                 f"{feats.shape[1]} tokens vs {self.decoder.num_queries} output positions")
            return self.decoder(z, query=queries, query_mask=query_mask, inputs_without_pos=feats,
                                subsampled_points=subsampled_output_points)
        return self.decoder(z)


TASK_CLASSES[None] = TASK_CLASSES["image"] = PerceiverIO
for _old in LEGACY_MODEL_TYPES:  # folders saved under the old per-task model types (see legacy.py)
    register_model_type(_old, PerceiverIO)
