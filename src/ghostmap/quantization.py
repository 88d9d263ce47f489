"""The network partly in 8-bit integers: ``ghostmap predict``'s default graph on the CPU.

A model folder holds the compact network more than once for ONNX Runtime: ``model.onnx`` in
float32, and ``model_int8.onnx`` (with ``model_int8_avx512.onnx``, the same numbers laid out
for AVX-512: :class:`ghostmap.model.WideStem`), where the third and fourth convolution stages
compute in 8-bit integers (:func:`quantize_graph`). The first two stages and the small head
stay in float32: the first (1-2 input channels at full size) because integer kernels gain
nothing there (0.37 ms a pattern against 0.11 in float), the second because its 8-bit
activations moved labels at domain walls (on Table 1's 128 px scans 3-42 of 7,004 labels per
model, up to 0.3 points of accuracy on one; without it 3-5, the probabilities within 0.02).
One core took 0.285 ms a pattern (AVX-512 graph) against 0.35-0.38 ms for float32
(BENCHMARKS.md, seventh round).

Integer activations need their ranges, so the graph is made where example inputs are at
hand: :func:`ghostmap.train` keeps the inputs of the labelled positions and of a sample of
the scan's other positions with the model (:attr:`ghostmap.model.Model.sample_inputs`), and
saving writes the int8 graph from them. A graph whose labels disagree with the float32
graph's on those inputs, beyond positions the float graph itself barely decides, is not
written. Making it needs the ``onnx`` package; running it needs only ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SKIPPED_OPTIMIZERS", "integer_nodes", "quantize_graph"]

# ONNX Runtime moves the quantization of a max-pool's output in front of the pool, where it then
# runs an 8-bit max-pool in the plain layout: 0.34 ms a pattern for the first stage's pool
# alone, the whole int8 gain lost. Sessions of either graph are made without that pass.
SKIPPED_OPTIMIZERS = ("QDQPropagationTransformer",)

# The first convolution computed in integers (counting from 1); see integer_nodes.
FIRST_INTEGER_CONV = 3

# A position whose two most probable classes lie within this of each other in the float32 graph
# may change its label in the int8 graph; a change anywhere else means the ranges are wrong.
CLOSE_CALL = 0.2


def integer_nodes(graph, first: int = FIRST_INTEGER_CONV) -> list[str]:
    """Names of the nodes computed in 8-bit integers: the convolutions from the ``first``-th
    (counting from 1) on, with the ReLUs and pools that follow them, up to the head (the first
    node of another kind).

    Parameters
    ----------
    graph : onnx.ModelProto
    first : int, optional

    Returns
    -------
    list of str
        Empty for a graph with fewer than ``first`` convolutions.
    """
    names, convs = [], 0
    for node in graph.graph.node:
        if node.op_type == "Conv":
            convs += 1
        if convs < first or node.op_type == "Constant":
            continue
        if node.op_type not in ("Conv", "Relu", "MaxPool", "AveragePool"):
            break
        names.append(node.name)
    return names


def quantize_graph(graph: bytes, inputs: np.ndarray, batch: int = 8) -> bytes | None:
    """The float32 graph ``graph`` with its later stages in 8-bit integers, or None where
    that cannot be made or does not keep the float graph's labels (the reason is logged).

    Weights are quantized per output channel (signed), activations per tensor (unsigned)
    over the ranges they take on ``inputs``.

    Parameters
    ----------
    graph : bytes
        An ONNX graph from :func:`ghostmap.model.export_onnx`.
    inputs : numpy.ndarray
        Example network inputs (n, channels, h, w) float32: a few hundred spread over a scan.
    batch : int, optional
        Inputs per run while the ranges are taken.

    Returns
    -------
    bytes or None
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        logger.info("no int8 graph: %s", exc)
        return None
    inputs = np.ascontiguousarray(inputs, np.float32)
    if inputs.ndim != 4 or len(inputs) == 0:
        return None
    proto = onnx.load_from_string(graph)
    nodes = integer_nodes(proto)
    if not nodes:
        return None
    name = proto.graph.input[0].name

    class Examples(CalibrationDataReader):
        def __init__(self):
            self.runs = iter([{name: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

        def get_next(self):
            return next(self.runs, None)

    with tempfile.TemporaryDirectory(prefix="ghostmap-int8-") as folder:
        prepared, path = os.path.join(folder, "model_shapes.onnx"), os.path.join(folder, "model_int8.onnx")
        try:
            # ONNX's shape inference only: the graph's shapes are static, and ONNX Runtime's own
            # graph optimisations belong to the machine that runs it, not to the file
            quant_pre_process(proto, prepared, skip_optimization=True, skip_symbolic_shape=True)
            quantize_static(prepared, path, Examples(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes)
            with open(path, "rb") as f:
                quantized = f.read()
        except Exception as exc:  # noqa: BLE001 - no int8 graph: predict runs the float one
            logger.warning("no int8 graph: quantization failed (%s: %s)", type(exc).__name__, str(exc).splitlines()[0][:200])
            return None
    problem = _disagreement(graph, quantized, inputs)
    if problem:
        logger.warning("no int8 graph: %s", problem)
        return None
    return quantized


def _disagreement(graph: bytes, quantized: bytes, inputs: np.ndarray) -> str:
    """Why ``quantized`` does not stand in for ``graph`` on ``inputs`` ('' where it does)."""
    from .runtime import OnnxNetwork

    plain = OnnxNetwork(graph, threads=1).probabilities(inputs)
    integer = OnnxNetwork(quantized, threads=1).probabilities(inputs)
    top2 = np.sort(plain, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > CLOSE_CALL
    changed = int(((plain.argmax(1) != integer.argmax(1)) & clear).sum())
    if changed:
        return f"it changes the label of {changed} of {len(inputs)} example patterns the float graph classifies clearly"
    return ""
