"""Model cost: parameters and multiply-accumulates (MACs) per clip, counted, not derived by hand.

``count_cost(model, input_shape)`` runs one forward pass of a batch-1 input under
``torch.utils.flop_counter.FlopCounterMode`` and reports MACs = FLOPs / 2 (the counter counts a
multiply-accumulate as 2 FLOPs), in total and per module. Only matrix products, convolutions,
attention and LSTMs/GRUs (CPU and cuDNN kernels) are counted; element-wise ops, norms and pooling are not, as in the
papers' tables.

CLI (a table, or JSON with ``--json``, for every registered encoder at its
``example_input_shape`` unless ``--input`` is given)::

    python -m avssl.encoders.cost [--names c3d,r3d18] [--input 3x16x112x112] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from avssl.errors import AvsslError


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None,
                            **kwargs) -> int:
    # one layer, one direction: every one of the T*B steps multiplies by W_ih and W_hh
    steps = math.prod(input_shape) // input_shape[-1]
    return 2 * steps * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def _cudnn_rnn_flops(input_shape, weight_shapes, *args, out_shape=None, **kwargs) -> int:
    # all layers and directions at once: every one of the T*B steps (packed or not) multiplies by
    # each layer's W_ih and W_hh (and LSTM's W_hr with proj_size); the 1-D shapes are biases
    steps = math.prod(input_shape) // input_shape[-1]
    return 2 * steps * sum(math.prod(w) for w in weight_shapes if len(w) == 2)


# FlopCounterMode knows the CUDA attention kernels but not the CPU kernels that
# scaled_dot_product_attention and nn.LSTM dispatch to on CPU, nor cuDNN's LSTM/GRU on a GPU:
# they would count as 0 and an RNN encoder's cost would depend on the device.
# (GRU on CPU decomposes into counted matmuls.)
_EXTRA_FLOP_RULES = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._cudnn_rnn: _cudnn_rnn_flops,
}


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_cost(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """Parameters and GMACs of one forward pass on one input.

    Args:
        model: any module whose ``forward`` takes one tensor.
        input_shape: one input WITHOUT the batch dim, e.g. ``(3, 16, 112, 112)``; the count is
            for a batch of 1 (i.e. per clip).

    Returns:
        ``{"params": int, "gmacs": float, "per_layer": {module_name: gmacs}}`` where module names
        are those of ``model.named_modules()`` (e.g. ``"conv1"``, ``"layer1.0.conv1"``); parent
        modules include their children; modules with no counted ops are left out. The model is
        run in eval mode under ``no_grad`` (its training flag is restored afterwards).
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(1, *input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_RULES)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_layer: dict[str, float] = {}
    for name, ops in counts.items():
        # The counter names modules "<RootClass>.<path>"; strip the root to match named_modules.
        if name == "Global" or name == root or not name.startswith(root + "."):
            continue
        per_layer[name[len(root) + 1:]] = sum(ops.values()) / 2 / 1e9
    return {
        "params": count_params(model),
        "gmacs": counter.get_total_flops() / 2 / 1e9,
        "per_layer": per_layer,
    }


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x16x112x112"`` -> ``(3, 16, 112, 112)``; raises ValueError on anything else."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ValueError("--input must look like 3x16x112x112 (one input, no batch dim), "
                         f"got {text!r}")
    return shape


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def cost_rows(names: Sequence[str], input_shape: Sequence[int] | None = None) -> list[dict]:
    """One ``{"name", "input", "params", "gmacs"}`` row per encoder (built with default kwargs).

    A model that cannot run on the requested input gets ``gmacs=None`` and an ``"error"`` field
    instead of stopping the whole table. Unknown names raise UnknownNameError before any build.
    """
    from avssl.encoders import ENCODERS, _load_all, build_encoder

    _load_all()
    for name in names:
        ENCODERS.get(name)  # fail fast, with close matches, before building anything
    rows = []
    for name in names:
        model = build_encoder(name)
        shape = tuple(input_shape) if input_shape is not None else tuple(model.example_input_shape)
        row = {"name": name, "input": _fmt_shape(shape), "params": count_params(model),
               "gmacs": None}
        try:
            row["gmacs"] = round(count_cost(model, shape)["gmacs"], 4)
        except (RuntimeError, ValueError, AvsslError) as e:
            row["error"] = " ".join(str(e).split())[:200]
        rows.append(row)
        del model
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table: name | input | params (M) | GMACs."""
    lines = ["| encoder | input (C x T x H x W / 1 x F x T) | params (M) | GMACs / clip |",
             "|---|---|---:|---:|"]
    for r in rows:
        g = r["gmacs"]
        gmacs = (f"error: {r.get('error', '')}" if g is None
                 else f"{g:.2f}" if g >= 0.1 else f"{g:.2g}")  # tiny models: 2 significant digits
        lines.append(f"| {r['name']} | {r['input']} | {r['params'] / 1e6:.2f} | {gmacs} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avssl.encoders.cost",
        description="Parameters and GMACs (FlopCounterMode FLOPs / 2) per clip of encoders.",
    )
    parser.add_argument("--names", default=None,
                        help="comma-separated encoder names (default: all)")
    parser.add_argument("--input", default=None,
                        help="one input shape without batch, e.g. 3x16x112x112 (default: each "
                             "encoder's example_input_shape)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)

    from avssl.encoders import list_encoders

    try:
        shape = parse_shape(args.input) if args.input else None
        names = ([n.strip() for n in args.names.split(",") if n.strip()] if args.names
                 else list_encoders())
        rows = cost_rows(names, shape)
    except (AvsslError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows))
    return 1 if any(r["gmacs"] is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
