"""Official DeepMind Haiku parameter files -> ``perceivers`` state dicts.

The official files are pickles of ``{module_path: {param_name: array}}`` (``FlatMapping`` under
Haiku 0.0.4; ImageNet ``.pystate`` files wrap them as ``{'params': ..., 'state': ...}``). A pickle
can execute code, so :func:`load_haiku_pickle` uses a restricted unpickler that accepts only dicts,
``OrderedDict``, numpy arrays/dtypes/scalars and Haiku's ``FlatMapping`` (rebuilt as a ``dict``);
anything else is refused with an error naming the class.

The key table is declarative: each row maps a Haiku *module* to one of ours with a kind that fixes
the parameter names and the tensor transform:

- ``linear``: ``w [in, out]`` -> ``weight [out, in]`` (transpose), ``b`` -> ``bias``;
- ``layer_norm`` / ``batchnorm``: ``scale``/``offset`` (squeezed from ``[1, 1, 1, C]``) -> ``weight``/``bias``;
- ``conv``: ``w`` HWIO -> OIHW with the permutation ``(3, 2, 0, 1)`` (HF's converter reverses all
  axes instead, which transposes the kernel spatially), ``b`` -> ``bias``;
- ``table``: ``pos_embs [N, C]`` unchanged;
- ``ema``: BatchNorm ``mean_ema``/``var_ema`` ``average`` -> ``running_mean``/``running_var``.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from perceivers.models.hub import load_state_dict_strict
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.registry import create_model

ModuleRow = tuple[str, str, str]  # (haiku module path, our module prefix, kind)

_LINEARS = (("attention/linear", "attention.q_proj"), ("attention/linear_1", "attention.k_proj"),
            ("attention/linear_2", "attention.v_proj"), ("attention/linear_3", "attention.o_proj"),
            ("mlp/linear", "mlp.fc1"), ("mlp/linear_1", "mlp.fc2"))


def cross_attention_rows(hk: str, ours: str) -> list[ModuleRow]:
    """Official ``CrossAttention`` at Haiku path ``hk`` -> our ``CrossAttentionBlock`` at ``ours``."""
    rows = [(f"{hk}/layer_norm", f"{ours}.q_norm", "layer_norm"), (f"{hk}/layer_norm_1", f"{ours}.kv_norm", "layer_norm"),
            (f"{hk}/layer_norm_2", f"{ours}.mlp_norm", "layer_norm")]
    return rows + [(f"{hk}/{h}", f"{ours}.{o}", "linear") for h, o in _LINEARS]


def self_attention_rows(hk: str, ours: str) -> list[ModuleRow]:
    """Official ``SelfAttention`` at ``hk`` -> our ``SelfAttentionBlock`` at ``ours``."""
    rows = [(f"{hk}/layer_norm", f"{ours}.attention_norm", "layer_norm"), (f"{hk}/layer_norm_1", f"{ours}.mlp_norm", "layer_norm")]
    return rows + [(f"{hk}/{h}", f"{ours}.{o}", "linear") for h, o in _LINEARS]


def haiku_suffix(index: int) -> str:
    """Haiku's name for the ``index``-th module of a type: '', '_1', '_2', ..."""
    return "" if index == 0 else f"_{index}"


def encoder_rows(num_self_attends_per_block: int, scope: str = "perceiver_encoder") -> list[ModuleRow]:
    rows = [(f"{scope}/~/trainable_position_encoding", "encoder.latents", "table")]
    rows += cross_attention_rows(f"{scope}/~/cross_attention", "encoder.cross_attends.0")
    for i in range(num_self_attends_per_block):
        rows += self_attention_rows(f"{scope}/~/self_attention{haiku_suffix(i)}", f"encoder.self_attends.{i}")
    return rows


def classification_decoder_rows() -> list[ModuleRow]:
    hk = "classification_decoder/~/basic_decoder"
    return [(f"{hk}/~/trainable_position_encoding", "decoder.query_pos.pos_embs", "table"),
            *cross_attention_rows(f"{hk}/cross_attention", "decoder.cross_attend"),
            (f"{hk}/output", "decoder.output", "linear")]


def image_preprocessor_rows(prep_type: str, position_encoding: str, project_pos_dim: int) -> list[ModuleRow]:
    hk = "image_preprocessor"
    rows: list[ModuleRow] = []
    if prep_type == "conv":
        down = f"{hk}/~/conv2_d_downsample/~"
        rows += [(f"{down}/conv", "preprocessor.conv.convs.0", "conv"),
                 (f"{down}/batchnorm", "preprocessor.conv.batchnorms.0", "batchnorm"),
                 (f"{down}/batchnorm/~/mean_ema", "preprocessor.conv.batchnorms.0.running_mean", "ema"),
                 (f"{down}/batchnorm/~/var_ema", "preprocessor.conv.batchnorms.0.running_var", "ema")]
    elif prep_type == "conv1x1":
        rows.append((f"{hk}/~/conv2_d", "preprocessor.conv1x1", "conv"))
    if position_encoding == "trainable":
        rows.append((f"{hk}/~_build_network_inputs/trainable_position_encoding",
                     "preprocessor.position.encoding.pos_embs", "table"))
    if project_pos_dim > 0:
        rows.append((f"{hk}/~_build_network_inputs/position_encoding_projector/linear",
                     "preprocessor.position.projection", "linear"))
    return rows


def language_mlm_rows(num_self_attends_per_block: int) -> list[ModuleRow]:
    """Official MLM colab (``language_perceiver_io_bytes.pickle``): ``embed/embeddings [262, C]``, the
    top-level input ``trainable_position_encoding``, the encoder, a standalone ``basic_decoder`` (no
    output linear) and ``embedding_decoder/bias [262]``; the logits reuse ``embed/embeddings``."""
    return [("embed", "preprocessor.embedding.weight", "embed"),
            ("trainable_position_encoding", "preprocessor.position.pos_embs", "table"),
            *encoder_rows(num_self_attends_per_block),
            ("basic_decoder/~/trainable_position_encoding", "decoder.query_pos.pos_embs", "table"),
            *cross_attention_rows("basic_decoder/cross_attention", "decoder.cross_attend"),
            ("embedding_decoder", "embedding_decoder.bias", "bias")]


def flow_rows(num_self_attends_per_block: int) -> list[ModuleRow]:
    """Official optical-flow colab (``optical_flow_checkpoint.pystate``): ``image_preprocessor/patches_linear``
    (``w [54, 64]``), the encoder, and ``flow_decoder/~/basic_decoder/{cross_attention, output}`` (``output``
    ``w [322, 2]``); the decoder's Fourier queries and the flow preprocessor have no other parameters."""
    hk = "flow_decoder/~/basic_decoder"
    return [("image_preprocessor/patches_linear", "preprocessor.image.patches_linear", "linear"),
            *encoder_rows(num_self_attends_per_block),
            *cross_attention_rows(f"{hk}/cross_attention", "decoder.cross_attend"),
            (f"{hk}/output", "decoder.output", "linear")]


#: Our modality kind -> official postprocessor module name.
POSTPROCESSOR_NAMES = {"audio": "audio_postprocessor", "video": "projection_postprocessor",
                       "label": "classification_postprocessor"}


def multimodal_rows(config: PerceiverIOConfig) -> list[ModuleRow]:
    """Official multimodal autoencoder (``video_autoencoding_checkpoint.pystate``); names (docs/checkpoints.md,
    "Haiku naming rules") for modality ``{m}`` of the config's multimodal preprocessor:

    - ``multimodal_preprocessor/{m}_padding/pos_embs`` ``[1, C_common - C_m]`` and
      ``multimodal_preprocessor/{m}_mask_token/pos_embs`` ``[1, C_common]`` (modalities with a mask token);
    - the encoder under ``encoder`` (the colab names it so, not ``perceiver_encoder``);
    - ``multimodal_decoder/~/basic_decoder/cross_attention/...`` and ``.../basic_decoder/output`` (``w [C_q, C_out]``);
    - ``multimodal_decoder/~decoder_query/{m}_padding/pos_embs`` ``[1, C_q - C_q,m]``;
    - the label query at top level, ``classification_decoder/~/basic_decoder/~/trainable_position_encoding/pos_embs``
      ``[1, C_label_query]`` (the colab builds the sub-decoders outside the multimodal decoder);
    - output layers named by class, not modality: ``audio_postprocessor/linear`` (audio),
      ``projection_postprocessor/linear`` (video), ``classification_postprocessor/linear`` (label).

    Haiku numbers repeated module names ``_1``, ``_2`` in creation order; with two modalities of one kind we
    assume they were created in sorted name order (the released model has one of each).
    """
    rows: list[ModuleRow] = []
    seen: dict[str, int] = {}
    for name, m in config.preprocessor.modalities.items():  # sorted names
        rows.append((f"multimodal_preprocessor/{name}_padding", f"preprocessor.padding.{name}", "table"))
        if m.mask_prob is not None:
            rows.append((f"multimodal_preprocessor/{name}_mask_token", f"preprocessor.mask_token.{name}", "table"))
        rows.append((f"multimodal_decoder/~decoder_query/{name}_padding", f"decoder.query_padding.{name}", "table"))
        k = seen.get(m.kind, 0)
        seen[m.kind] = k + 1
        if m.kind == "label":
            rows.append((f"classification_decoder{haiku_suffix(k)}/~/basic_decoder/~/trainable_position_encoding",
                         f"decoder.queries.{name}.pos_embs", "table"))
        rows.append((f"{POSTPROCESSOR_NAMES[m.kind]}{haiku_suffix(k)}/linear", f"postprocessors.{name}", "linear"))
    rows += encoder_rows(config.encoder.num_self_attends_per_block, scope="encoder")
    rows += cross_attention_rows("multimodal_decoder/~/basic_decoder/cross_attention", "decoder.cross_attend")
    rows.append(("multimodal_decoder/~/basic_decoder/output", "decoder.output", "linear"))
    return rows


_KIND_PARAMS: dict[str, dict[str, str]] = {
    "linear": {"w": "weight", "b": "bias"}, "conv": {"w": "weight", "b": "bias"},
    "layer_norm": {"scale": "weight", "offset": "bias"}, "batchnorm": {"scale": "weight", "offset": "bias"},
    "table": {"pos_embs": ""}, "ema": {"average": ""}, "embed": {"embeddings": ""}, "bias": {"bias": ""},
}
_IGNORED_PARAMS = {"ema": {"hidden", "counter"}}


def _transform(kind: str, param: str, array: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if kind == "linear" and param == "w":
        return t.T.contiguous()
    if kind == "conv" and param == "w":
        if t.dim() != 4:
            raise ValueError(f"conv kernel must be 4-D HWIO, got shape {tuple(t.shape)}")
        return t.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    if kind in ("batchnorm", "ema"):
        return t.reshape(-1)
    return t


def convert_tree(tree: Mapping[str, Mapping[str, np.ndarray]], rows: list[ModuleRow]) -> dict[str, Tensor]:
    """Apply the module table to a two-level Haiku tree.

    Raises ``ValueError`` listing every Haiku parameter the table does not use and every table
    module absent from the tree. (Per-tensor completeness and shapes are checked when the result is
    loaded strictly into a model, see :func:`load_into`.)
    """
    table = {hk: (ours, kind) for hk, ours, kind in rows}
    out: dict[str, Tensor] = {}
    unexpected = []
    for module, params in tree.items():
        ours, kind = table.get(module, (None, None))
        for param, array in params.items():
            suffix = _KIND_PARAMS[kind].get(param) if kind is not None else None
            if suffix is None:
                if param not in _IGNORED_PARAMS.get(kind or "", ()):
                    unexpected.append(f"{module}/{param}")
                continue
            out[f"{ours}.{suffix}" if suffix else ours] = _transform(kind, param, array)
    missing = sorted(hk for hk in table if hk not in tree)
    if unexpected or missing:
        lines = ["Haiku parameters do not match the model:"]
        lines += [f"  unexpected: {k}" for k in sorted(unexpected)]
        lines += [f"  missing module: {k}" for k in missing]
        raise ValueError("\n".join(lines))
    return out


def load_into(model: torch.nn.Module, converted: dict[str, Tensor], *, source: str) -> None:
    """Strictly load converted tensors; buffers without an official counterpart
    (BatchNorm ``num_batches_tracked``) keep the model's values."""
    state = dict(converted)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    load_state_dict_strict(model, state, source=source)


class _FlatMapping(dict):
    """Stand-in for ``haiku._src.data_structures.FlatMapping``: a plain dict however it was pickled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if args and not isinstance(args[0], Mapping):
            args = (dict(args[0]),)
        self.update(*args, **kwargs)

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):
            state = next((s for s in state if isinstance(s, Mapping)), {})
        self.update(state or {})


_SHIMS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "dict"): dict,
    ("haiku._src.data_structures", "FlatMapping"): _FlatMapping,
    ("haiku._src.data_structures", "FlatMap"): _FlatMapping,
}
# numpy's own array reconstruction (numpy 1.x pickles say numpy.core, numpy 2.x numpy._core).
_NUMPY: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(mod, name): getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, name)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
}


class RefusedClassError(pickle.UnpicklingError):
    """The pickle names a class the restricted unpickler does not allow."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _SHIMS.get((module, name)) or _NUMPY.get((module, name))
        if found is None:
            raise RefusedClassError(
                f"refusing to unpickle {module}.{name}: Haiku parameter files may only contain dicts, "
                f"numpy arrays and haiku FlatMapping")
        return found


def load_haiku_pickle(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Read an official parameter file safely: ``(params, state)`` as two-level dicts of arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Haiku parameter file {str(path)!r} does not exist")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except RefusedClassError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # truncated or foreign files
        raise ValueError(f"{path} is not a readable Haiku parameter pickle: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a mapping of module paths, got {type(obj).__name__}")
    params, state = (obj["params"], obj.get("state") or {}) if "params" in obj else (obj, {})
    return _two_level(params, path), _two_level(state, path)


def _two_level(tree: Mapping, path: Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for module, params in tree.items():
        if not isinstance(params, Mapping):
            raise ValueError(f"{path}: module {module!r} holds a {type(params).__name__}, not a mapping of arrays")
        for name, value in params.items():
            if not isinstance(value, (np.ndarray, np.generic)):
                raise ValueError(f"{path}: {module}/{name} is a {type(value).__name__}, not a numpy array")
        out[str(module)] = dict(params)
    return out


#: Official ImageNet checkpoints, recognised by their preprocessor modules.
_IMAGENET_BY_MODULE = (("image_preprocessor/~/conv2_d_downsample/~/conv", "perceiver-io-imagenet-conv"),
                       ("image_preprocessor/~/conv2_d", "perceiver-io-imagenet-learned"))


def guess_model_name(params: Mapping[str, object]) -> str:
    """The registered model an official parameter tree belongs to (ImageNet classifiers, language MLM, flow,
    multimodal autoencoder)."""
    if "embedding_decoder" in params:
        return "perceiver-io-language-mlm"
    if "flow_decoder/~/basic_decoder/output" in params:
        return "perceiver-io-flow"
    if "multimodal_decoder/~/basic_decoder/output" in params:
        return "perceiver-io-multimodal-kinetics"
    if "classification_decoder/~/basic_decoder/output" not in params:
        raise ValueError("cannot tell which model these Haiku parameters belong to (no ImageNet classification "
                         "decoder); pass the registered model name explicitly")
    for module, name in _IMAGENET_BY_MODULE:
        if module in params:
            return name
    return "perceiver-io-imagenet-fourier"


def model_rows(config: PerceiverIOConfig) -> list[ModuleRow]:
    """The module table for a Perceiver IO config: an ImageNet-style image classifier, the language MLM, optical
    flow or the multimodal autoencoder (chosen by its preprocessor)."""
    kind = config.preprocessor_type if isinstance(config, PerceiverIOConfig) else "other"
    if kind == "multimodal":
        return multimodal_rows(config)
    if kind == "text" and config.is_mlm:
        return language_mlm_rows(config.encoder.num_self_attends_per_block)
    if kind == "flow":
        return flow_rows(config.encoder.num_self_attends_per_block)
    if kind != "image" or config.decoder.type != "classification" or config.encoder.layout != "io":
        raise ValueError("Haiku conversion supports Perceiver IO image classifiers (io encoder, classification "
                         "decoder, image preprocessor), the language MLM, optical flow and the multimodal "
                         "autoencoder")
    p = config.preprocessor
    return (image_preprocessor_rows(p.prep_type, p.position_encoding, p.project_pos_dim)
            + encoder_rows(config.encoder.num_self_attends_per_block) + classification_decoder_rows())


def convert_haiku_file(path: str | Path, model_name: str | None = None, **overrides):
    """Build the registered model for an official parameter file and load its weights (and BatchNorm
    statistics) strictly. Returns the model in eval mode."""
    params, state = load_haiku_pickle(path)
    name = model_name or guess_model_name(params)
    model = create_model(name, device="meta", **overrides)
    converted = convert_tree({**params, **state}, model_rows(model.config))
    load_into(model, converted, source=str(path))
    return model.eval()
