"""Parameter counts and a MACs estimate per window, for the paper's compute table.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, RNN cells as they
decompose on CPU; elementwise work is not counted, as in the usual MACs convention) for one
forward pass of a single window, divided by two (one MAC = two FLOPs). The counter sees torch
ops only, so the plug-in composes its loss of them while counting (``fast.composition_only``).
The k > 1 plug-in's distances are elementwise ops the counter cannot see, though they are the
same work as k matrix-vector products; :func:`cluster_macs` adds them and the Student-t
assignment.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from madcluster_exp.detector import Detector, count_parameters
from madcluster_exp.madcluster.fast import composition_only


def _lstm_macs(module: nn.LSTM, inputs, output) -> int:
    """MACs of one LSTM call: 4 gates x (input + hidden) x hidden per layer, direction, step."""
    x = inputs[0]
    steps = x.shape[1] if module.batch_first else x.shape[0]
    batch = x.shape[0] if module.batch_first else x.shape[1]
    dirs = 2 if module.bidirectional else 1
    h = module.hidden_size
    total = 0
    for layer in range(module.num_layers):
        d_in = module.input_size if layer == 0 else h * dirs
        total += 4 * (d_in + h) * h * dirs
    return total * steps * batch


def _mv_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _dot_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


# Matrix-vector and vector-vector products, which the counter leaves out (a [B, T, f] @ [f]
# matmul lowers to mv; the plug-in's z . c is one).
_EXTRA_FORMULAS = {torch.ops.aten.mv: _mv_flops, torch.ops.aten.dot: _dot_flops}


def count_macs(fn: Callable[[], object], model: nn.Module) -> int:
    """FLOP counter / 2 (matmul-like ops: mm, bmm, mv, dot, conv), plus LSTMs, whose fused CPU
    kernel the counter does not see (GRUs it does: they decompose into counted matmuls)."""
    extra = [0]
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o: extra.__setitem__(0, extra[0] + _lstm_macs(mod, i, o))
        )
        for m in model.modules()
        if isinstance(m, nn.LSTM)
    ]
    try:
        with (
            composition_only(),
            FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter,
        ):
            fn()
    finally:
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) // 2 + extra[0]


def cluster_macs(plugin, z: torch.Tensor) -> int:
    """MACs of the k > 1 plug-in per window that the counter misses: the squared distance of
    each of T steps to each of k centres (f MACs each, as ||h||^2 - 2 h.c + ||c||^2 would be)
    and the Student-t assignment (one per step and centre). k = 1's h . c is a counted
    matrix-vector product, so it adds nothing here."""
    from madcluster_exp.madcluster.plugin import MultiMADCluster

    if not isinstance(plugin, MultiMADCluster):
        return 0
    steps, features = z.shape[-2], z.shape[-1]
    return steps * plugin.k * (features + 1)


@torch.no_grad()
def complexity(detector: Detector, n_channels: int) -> Dict[str, int]:
    """params/* and macs/* (per window, inference) for the backbone and the plug-in."""
    backbone, plugin = detector.backbone, detector.plugin
    x = torch.zeros(1, backbone.input_length, n_channels, device=next(backbone.parameters()).device)
    was_training = detector.training
    detector.eval()
    try:
        out = backbone(x)
        stats = {
            "params/backbone": count_parameters(backbone),
            "params/madcluster": count_parameters(plugin),
            "macs/backbone": count_macs(lambda: backbone.score(x, backbone(x)), backbone),
            "macs/madcluster": (
                count_macs(lambda: plugin.score(out.z), plugin) + cluster_macs(plugin, out.z)
                if plugin is not None
                else 0
            ),
        }
    finally:
        detector.train(was_training)
    stats["params/total"] = stats["params/backbone"] + stats["params/madcluster"]
    stats["macs/total"] = stats["macs/backbone"] + stats["macs/madcluster"]
    return stats
