"""The networks, and a trained model's files: weights as safetensors, everything else as JSON.

Two architectures:

* ``paper`` — exactly the paper's "ghost hunter" CNN: 3x3 convolutions to 16, 32 and 64
  channels, each with ReLU and 2x2 max-pool, a dense layer of 128 and one output per
  class. Its dense layer (64 x h/8 x w/8 -> 128, 8.4 M weights at 256 x 256) dominates its cost.
* ``compact`` (the default) — the same kind of convolution stack, narrower, with one
  more stage and an adaptive average pool to 4 x 4 before a small dense head, so the
  cost no longer scales with a huge dense layer and any input size works.

A model directory holds ``model.safetensors`` and ``model.json`` (classes, architecture,
preprocessing, detector shape, training metrics and the weights' SHA-256, so a weights
file that does not belong to the JSON is refused), and ``model.onnx``: the network as an
ONNX graph (:func:`export_onnx`), which ``ghostmap predict`` runs with ONNX Runtime on the
CPU without loading torch at all. Nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, load_file, save, save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import GhostmapError
from .modelfile import (
    FORMAT,
    GRAPH_KEYS,
    INT8_AVX512_FILE,
    INT8_FILE,
    META_FILE,
    ONNX_FILE,
    REFERENCE_KEY,
    WEIGHTS_FILE,
    file_sha256,
    read_description,
)
from .preprocessing import Preprocessing
from .result import Prediction

logger = logging.getLogger(__name__)

ARCHITECTURES = ("compact", "paper")
BYTES_MAGIC = b"ghostmap-model\0"  # the start of Model.to_bytes()
MODEL_FILES = (WEIGHTS_FILE, *GRAPH_KEYS, META_FILE)  # what a model folder holds


def _conv(cin: int, cout: int, norm: bool = False) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class PaperNet(nn.Module):
    """The paper's CNN (Figure 4), for a channels x h x w input (the paper's: one channel)."""

    def __init__(self, n_classes: int, input_shape: tuple[int, int], channels: int = 1):
        super().__init__()
        h, w = input_shape
        self.features = nn.Sequential(*_conv(channels, 16), *_conv(16, 32), *_conv(32, 64))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * (h // 8) * (w // 8), 128), nn.ReLU(inplace=True), nn.Linear(128, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


STEMS = ("pool", "stride")


def stem_layers(cin: int, cout: int, stem: str) -> list[nn.Module]:
    """The compact network's first stage, which halves the input's size.

    ``"pool"`` (the default): a convolution at full size, batch norm, ReLU and a 2 x 2 max-pool.
    ``"stride"`` (``ghostmap train --stem stride``): a stride-2 convolution, batch norm and ReLU.
    Writing and max-pooling the full-size activations takes 40% of the network's time: at
    128 x 128, one thread of ONNX Runtime classified a pattern in 0.26 ms with the stride stem
    against 0.44 ms with the pool stem. It is not the default because it learnt less from few
    labels: a median of 96.2% against 97.3% over 5 seeds with 25 actively sampled labels, and far
    less on 32 px patterns (BENCHMARKS.md, issue 13's fourth round).

    Example
    -------
    >>> [type(layer).__name__ for layer in stem_layers(1, 8, "stride")]
    ['Conv2d', 'BatchNorm2d', 'ReLU']
    """
    if stem == "stride":
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if stem == "pool":
        return _conv(cin, cout, True)
    raise GhostmapError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")


class CompactNet(nn.Module):
    """ghostmap's default: a narrow four-stage CNN with an adaptive pool before a small head.

    Its output is the logits divided by ``temperature`` (1 while training; after it, the value
    :func:`ghostmap.training.train` fitted, kept in ``model.json``'s metrics rather than in the
    weights), so ``softmax`` of the output is the calibrated probability and the winning class
    is the same at any temperature. ``stem`` is its first stage (:func:`stem_layers`); ``channels``
    the input's (2 with :attr:`ghostmap.preprocessing.Preprocessing.own_pattern`).
    """

    def __init__(self, n_classes: int, input_shape: tuple[int, int], width: int = 8, stem: str = "pool",
                 channels: int = 1):
        super().__init__()
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        self.stem = stem
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 4 * width
        self.features = nn.Sequential(
            *stem_layers(channels, c1, stem), *_conv(c1, c2, True), *_conv(c2, c3, True),
            nn.Conv2d(c3, c4, 3, padding=1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(c4 * 16, 64), nn.ReLU(inplace=True), nn.Linear(64, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / self.temperature


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The one place a compute device is chosen: the named one, else CUDA when present, else the CPU.

    Used by training, prediction, the Dask and LiberTEM paths and the label page alike.

    Parameters
    ----------
    device : str, torch.device or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; None picks CUDA when torch sees one.

    Returns
    -------
    torch.device

    Raises
    ------
    GhostmapError
        For an unknown device name, or CUDA asked for where there is none.

    Example
    -------
    >>> pick_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise GhostmapError(f"unknown device '{device}'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise GhostmapError(f"device '{device}' asked for, but no CUDA device is available")
        return dev
    chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logger.debug("no device named: %s chosen", chosen)
    return chosen


def build_network(arch: str, n_classes: int, input_shape: tuple[int, int], members: int = 1,
                  stem: str = "pool", channels: int = 1) -> nn.Module:
    """A freshly initialised network of the named architecture (``members`` > 1: a compact ensemble;
    ``stem``: the compact network's first stage, :func:`stem_layers`; ``channels``: of its input,
    :attr:`ghostmap.preprocessing.Preprocessing.channels`)."""
    if members > 1:
        if arch != "compact":
            raise GhostmapError(f"only the compact architecture comes as an ensemble, not '{arch}'")
        from .ensemble import EnsembleNet

        return EnsembleNet(n_classes, input_shape, members=members, stem=stem, channels=channels)
    if arch == "paper":
        if min(input_shape) < 8:
            raise GhostmapError(f"the paper architecture needs inputs of at least 8 x 8, got {input_shape}")
        return PaperNet(n_classes, input_shape, channels=channels)
    if arch == "compact":
        return CompactNet(n_classes, input_shape, stem=stem, channels=channels)
    raise GhostmapError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")


def input_channels(network: nn.Module) -> int:
    """Channels of the input ``network`` takes: those of its first convolution.

    Example
    -------
    >>> input_channels(build_network("compact", 3, (32, 32), channels=2))
    2
    """
    first = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    return 1 if first is None else int(first.in_channels)


def fused_for_inference(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in eval mode that computes the same outputs with fewer passes.

    Inside every ``nn.Sequential``, a convolution followed by batch norm becomes one
    convolution (the norm's scale and shift folded into its weights and bias), a ReLU
    followed by a max-pool trades places (ReLU never lowers the order of its inputs, so the
    result is the same, on a quarter of the values), and 2 x 2 max-pools become
    :class:`MaxPool2x2` (the same values, no arg-max). In eval mode batch norm is a fixed affine
    map, so outputs differ from the plain network's only by float rounding (about 1e-5 on
    the logits); the compact network at 128 x 128 ran 2-3 x faster on the CPU (BENCHMARKS.md).
    The network itself is left untouched: training and the saved weights never see the copy.

    Parameters
    ----------
    network : torch.nn.Module
        A network such as ``build_network`` makes.

    Returns
    -------
    torch.nn.Module
        The fused copy, in eval mode, for inference only.

    Example
    -------
    >>> net = build_network("compact", 3, (32, 32)).eval()
    >>> x = torch.randn(2, 1, 32, 32)
    >>> bool(torch.allclose(fused_for_inference(net)(x), net(x), atol=1e-4))
    True
    """
    fused = copy.deepcopy(network).eval()
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            layers = _fused_layers(list(module))
            module._modules.clear()
            for i, layer in enumerate(layers):
                module.add_module(str(i), layer)
    return fused


class MaxPool2x2(nn.Module):
    """A 2 x 2 max-pool with stride 2: the values of ``nn.MaxPool2d(2)``, computed as two
    element-wise maxima over a channels-last view (rows, then columns). For the channels-last
    activations of inference this ran 2-4 x faster than ``nn.MaxPool2d(2)`` on the CPU, which
    also works out (and here would throw away) the arg-max of every window.

    Example
    -------
    >>> x = torch.randn(2, 3, 6, 5)
    >>> bool(torch.equal(MaxPool2x2()(x), nn.MaxPool2d(2)(x)))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2
        rows = x[:, :, : 2 * h2, : 2 * w2].permute(0, 2, 3, 1).reshape(n, h2, 2, 2 * w2 * c)
        pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1]).view(n, h2, w2, 2 * c)
        return torch.maximum(pairs[..., :c], pairs[..., c:]).permute(0, 3, 1, 2)


def _is_plain_2x2_pool(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.MaxPool2d) and not layer.ceil_mode and not layer.return_indices
            and all(_pair(v) == expected for v, expected in ((layer.kernel_size, (2, 2)), (layer.stride, (2, 2)),
                                                               (layer.padding, (0, 0)), (layer.dilation, (1, 1)))))


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _fused_layers(layers: list[nn.Module]) -> list[nn.Module]:
    """``layers`` with conv + batch norm folded and ReLU + max-pool swapped (see :func:`fused_for_inference`)."""
    out: list[nn.Module] = []
    for layer in layers:
        if _is_plain_2x2_pool(layer):
            layer = MaxPool2x2()
        if isinstance(layer, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d) and layer.track_running_stats:
            out[-1] = fuse_conv_bn_eval(out[-1], layer)
        elif isinstance(layer, (nn.MaxPool2d, MaxPool2x2)) and out and isinstance(out[-1], nn.ReLU):
            out.insert(len(out) - 1, layer)
        elif isinstance(layer, nn.Dropout):  # the identity in eval mode
            continue
        else:
            out.append(layer)
    return out


class WideStem(nn.Module):
    """A compact network whose first stage computes ``width`` channels, those beyond its own
    zero, and passes on only its own after the max-pool: the same outputs, another graph.

    For ONNX Runtime on processors with 16 floats to a vector register (AVX-512): it computes
    convolutions in blocks of 16 channels, so the compact network's 8-channel first stage is
    computed 16 wide anyway and converted back to the plain layout at full size (0.04 ms a
    pattern at 128 x 128), where it is then max-pooled in the plain layout (0.03 ms). Padded
    to 16, the stage stays blocked through the pool and is converted at a quarter of the size.
    With 8 floats to a register (AVX2) the padding would only add a convolution's work.
    """

    def __init__(self, network: "CompactNet", width: int = 16):
        super().__init__()
        conv, norm = network.features[0], network.features[1]
        own = conv.out_channels
        wide_conv = nn.Conv2d(conv.in_channels, width, conv.kernel_size, padding=conv.padding, bias=False)
        wide_norm = nn.BatchNorm2d(width, eps=norm.eps)  # weight 1, bias 0, mean 0, variance 1 beyond `own`
        with torch.no_grad():
            wide_conv.weight.zero_()
            wide_conv.weight[:own] = conv.weight
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(wide_norm, name)[:own] = getattr(norm, name)
        self.stem = nn.Sequential(wide_conv, wide_norm, *network.features[2:4])
        self.rest, self.head, self.own = network.features[4:], network.head, own
        self.register_buffer("temperature", network.temperature.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rest(self.stem(x)[:, : self.own])) / self.temperature


def widens(network: nn.Module, width: int) -> bool:
    """Whether :class:`WideStem` applies: a compact network with a pool stem narrower than ``width``."""
    return (isinstance(network, CompactNet) and network.stem == "pool"
            and network.features[0].out_channels < width)


def export_onnx(network: nn.Module, input_shape: tuple[int, int], stem_width: int | None = None) -> bytes | None:
    """The network, in eval mode, as an ONNX graph taking ``patterns`` (n, 1, h, w) to ``logits``
    (n, classes) for any n; None where torch's exporter cannot make one (the reason is logged).

    ONNX Runtime folds the batch norms into the convolutions and the ReLUs into them itself.
    Its outputs equal the network's to float rounding (about 1e-5 on the logits; tested).

    Parameters
    ----------
    network : torch.nn.Module
        A network such as ``build_network`` makes; it is not changed (a CPU copy is exported).
    input_shape : tuple of int
        (h, w) of one preprocessed pattern.
    stem_width : int, optional
        Export the compact network's first stage this many channels wide (:class:`WideStem`),
        where :func:`widens` says it applies.

    Returns
    -------
    bytes or None

    Example
    -------
    >>> graph = export_onnx(build_network("compact", 3, (32, 32)), (32, 32))
    >>> graph is None or len(graph) > 1000
    True
    """
    import io
    import warnings

    copy_ = copy.deepcopy(network).cpu().eval()
    if stem_width and widens(copy_, stem_width):
        copy_ = WideStem(copy_, stem_width).eval()
    channels = input_channels(copy_)
    out = io.BytesIO()
    try:
        with warnings.catch_warnings():  # torch announces its newer exporter; this one needs no extra packages
            warnings.simplefilter("ignore")
            torch.onnx.export(copy_, torch.zeros(1, channels, *input_shape), out, input_names=["patterns"],
                              output_names=["logits"], dynamic_axes={"patterns": {0: "n"}, "logits": {0: "n"}},
                              dynamo=False)
    except Exception as exc:  # noqa: BLE001 - any failure means: no ONNX file, predict uses torch
        logger.warning("the network could not be exported to ONNX (%s: %s); predict will use torch",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    return out.getvalue()


@dataclass
class Model:
    """A trained classifier with everything needed to apply it to a new scan.

    :func:`ghostmap.train` makes one and :meth:`load` reads one back from a model folder;
    :func:`ghostmap.predict` applies it. Building one by hand, as below, is for tests and
    examples: the network is then untrained.

    Parameters
    ----------
    network : torch.nn.Module
        The classifier, taking (n, channels, h, w) preprocessed patterns to (n, len(classes))
        scores (``preprocessing.channels``); see ``build_network``.
    classes : tuple of str
        The class names, in the order of the network's outputs.
    arch : str
        The architecture's name: ``"compact"`` (the default of :func:`ghostmap.train`) or ``"paper"``.
    preprocessing : Preprocessing
        How raw patterns become the network's input; applied identically in prediction.
    detector_shape : tuple of int
        (det_rows, det_cols) of the patterns the model was trained on; scans with another
        detector shape are refused.
    metrics : dict, optional
        Training metrics (accuracy, loss, ...) kept with the model in ``model.json``.
    sample_inputs : numpy.ndarray, optional
        Network inputs (n, channels, h, w) of positions spread over the training scan, kept in
        memory only (:func:`ghostmap.train` sets them): :meth:`save` takes the int8 graph's
        activation ranges from them (:mod:`ghostmap.quantization`). Without them no int8 graph
        is written, and ``ghostmap predict`` runs the float32 one.
    scan_prediction : Prediction, optional
        The training scan as this model classifies it, kept in memory only: :func:`ghostmap.train`
        classifies the scan anyway to calibrate, so a caller that wants the map (the label page's
        preview) need not classify it again. None after :meth:`load`.

    Raises
    ------
    GhostmapError
        From :meth:`load`, :meth:`from_bytes` and :meth:`check_scan`: a missing, damaged or
        mismatched model folder, or a scan the model does not fit.

    Examples
    --------
    >>> import tempfile
    >>> import ghostmap as gm
    >>> from ghostmap.model import build_network
    >>> model = gm.Model(build_network("compact", 2, (32, 32)), ("up", "down"), "compact",
    ...                  gm.Preprocessing(pool=1), (32, 32))
    >>> model.input_shape
    (32, 32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     gm.Model.load(model.save(f"{folder}/model")).classes
    ('up', 'down')
    """

    network: nn.Module
    classes: tuple[str, ...]
    arch: str
    preprocessing: Preprocessing
    detector_shape: tuple[int, int]
    metrics: dict = field(default_factory=dict)
    sample_inputs: np.ndarray | None = field(default=None, repr=False, compare=False)
    scan_prediction: Prediction | None = field(default=None, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(h, w) of one preprocessed pattern: what the network takes."""
        return self.preprocessing.output_shape(self.detector_shape)

    def check_scan(self, detector_shape: tuple[int, int], source: str = "the scan") -> None:
        """Refuse a scan whose detector shape differs from the one the model was trained on."""
        if tuple(detector_shape) != tuple(self.detector_shape):
            raise GhostmapError(
                f"the model was trained on {self.detector_shape[0]} x {self.detector_shape[1]} patterns "
                f"but {source} has {detector_shape[0]} x {detector_shape[1]}"
            )

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``model.onnx`` (where the network exports) and ``model.json`` into ``directory``.

        Both files are written into a fresh sibling folder first, which then takes the
        place of ``directory``, so an interrupted save never leaves new weights beside an
        old description; the previous model survives until the new one is complete.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise GhostmapError(f"{directory} exists and is not a folder")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            self._write(staging)
            _swap_in(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def _state(self) -> dict[str, torch.Tensor]:
        """What goes into the safetensors file: the network's weights and the reference pattern."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        if self.preprocessing.reference is not None:
            state[REFERENCE_KEY] = torch.as_tensor(self.preprocessing.reference, dtype=torch.float32).contiguous()
        return state

    def _description(self, weights_sha256: str, graphs_sha256: dict[str, str] | None = None) -> dict:
        """What goes into ``model.json``."""
        described = {
            "format": FORMAT,
            "version": 1,
            "classes": list(self.classes),
            "arch": self.arch,
            "members": int(getattr(self.network, "members", 1)),
            "input_shape": list(self.input_shape),
            "detector_shape": list(self.detector_shape),
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "weights_sha256": weights_sha256,
        }
        if getattr(self.network, "stem", None) is not None:
            described["stem"] = self.network.stem
        for name, digest in (graphs_sha256 or {}).items():
            described[GRAPH_KEYS[name]] = digest
        return described

    def _write(self, directory: Path) -> None:
        save_file(self._state(), str(directory / WEIGHTS_FILE))
        graph = export_onnx(self.network, self.input_shape)
        graphs = {ONNX_FILE: graph, **self._int8_graphs(graph)}
        for name, data in graphs.items():
            if data is not None:
                (directory / name).write_bytes(data)
        meta = self._description(file_sha256(directory / WEIGHTS_FILE),
                                 {name: hashlib.sha256(data).hexdigest() for name, data in graphs.items() if data})
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.chmod(directory, 0o777 & ~_umask())
        for name in MODEL_FILES:
            if (directory / name).exists():
                os.chmod(directory / name, 0o666 & ~_umask())

    def _int8_graphs(self, graph: bytes | None) -> dict[str, bytes | None]:
        """The int8 forms of ``graph`` for the one compact network, where there are sample
        inputs: for any processor, and with the first stage 16 wide for AVX-512 (:class:`WideStem`)."""
        if graph is None or self.sample_inputs is None or not isinstance(self.network, CompactNet):
            return {}
        from .quantization import quantize_graph

        int8 = quantize_graph(graph, self.sample_inputs)
        if int8 is None or not widens(self.network, 16):
            return {INT8_FILE: int8}
        wide = export_onnx(self.network, self.input_shape, stem_width=16)
        return {INT8_FILE: int8, INT8_AVX512_FILE: quantize_graph(wide, self.sample_inputs) if wide else None}

    @classmethod
    def load(cls, directory: str | Path) -> "Model":
        """Read a model directory written by :meth:`save`."""
        directory = Path(directory)
        meta = read_description(directory)
        return cls._build(meta, lambda: load_file(str(directory / WEIGHTS_FILE)), str(directory))

    def to_bytes(self) -> bytes:
        """The model as one bytes object, to send to other processes or machines (never a pickle).

        The same two parts as a model folder: the ``model.json`` description (with the
        weights' SHA-256) and the safetensors weights, behind a header and the JSON's length.
        """
        weights = save(self._state())
        meta = json.dumps(self._description(hashlib.sha256(weights).hexdigest())).encode("utf-8")
        return BYTES_MAGIC + len(meta).to_bytes(8, "little") + meta + weights

    @staticmethod
    def describe_bytes(data: bytes) -> dict:
        """The ``model.json`` description inside :meth:`to_bytes`' output, without building the network."""
        data = bytes(data)
        head = len(BYTES_MAGIC) + 8
        if not data.startswith(BYTES_MAGIC) or len(data) < head:
            raise GhostmapError("the bytes given are not a ghostmap model")
        size = int.from_bytes(data[len(BYTES_MAGIC) : head], "little")
        try:
            meta = json.loads(data[head : head + size].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise GhostmapError(f"the model bytes hold no valid description: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise GhostmapError("the model bytes hold no ghostmap model description")
        meta["_weights_offset"] = head + size
        return meta

    @classmethod
    def from_bytes(cls, data: bytes) -> "Model":
        """A model from :meth:`to_bytes`, checked as :meth:`load` checks a folder."""
        data = bytes(data)
        meta = cls.describe_bytes(data)
        weights = data[meta.pop("_weights_offset") :]
        if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
            raise GhostmapError("the model bytes are damaged: the weights' checksum differs from the description's")
        return cls._build(meta, lambda: load(weights), "the model bytes")

    @classmethod
    def _build(cls, meta: dict, read_weights, where: str) -> "Model":
        """A model from its JSON description and a function returning its safetensors state."""
        try:
            classes = tuple(str(c) for c in meta["classes"])
            prep = Preprocessing.from_dict(meta["preprocessing"])
            detector_shape = tuple(int(v) for v in meta["detector_shape"])
            network = build_network(meta["arch"], len(classes), prep.output_shape(detector_shape),
                                    members=int(meta.get("members", 1)), stem=str(meta.get("stem", "pool")),
                                    channels=prep.channels)
            state = read_weights()
            reference = state.pop(REFERENCE_KEY, None)
            if prep.subtract_mean and reference is None:
                raise ValueError("the reference pattern is missing")
            prep.reference = reference.numpy() if reference is not None else None
            network.load_state_dict(state)
            temperature = meta.get("metrics", {}).get("temperature")
            if isinstance(network, CompactNet) and temperature is not None:
                if not float(temperature) > 0:
                    raise ValueError(f"temperature {temperature} is not positive")
                network.temperature.fill_(float(temperature))
        except (KeyError, TypeError, ValueError, RuntimeError, GhostmapError) as exc:
            raise GhostmapError(f"{where} holds a damaged model: {str(exc).splitlines()[0]}") from None
        network.eval()
        return cls(network, classes, meta["arch"], prep, detector_shape, meta.get("metrics", {}))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(staging: Path, directory: Path) -> None:
    """Put the complete model folder ``staging`` in the place of ``directory``."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    others = {p.name for p in directory.iterdir()} - set(MODEL_FILES)
    if others:  # a folder with the user's other files in it: replace our files, the JSON last
        os.replace(staging / WEIGHTS_FILE, directory / WEIGHTS_FILE)
        for name in GRAPH_KEYS:
            if (staging / name).exists():
                os.replace(staging / name, directory / name)
            else:  # an old graph would not match the new JSON (nothing uses it, but it would mislead)
                (directory / name).unlink(missing_ok=True)
        os.replace(staging / META_FILE, directory / META_FILE)
        return
    backup = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(directory, backup)
    os.replace(staging, directory)
    shutil.rmtree(backup, ignore_errors=True)
