"""FLOP counting with ``torch.utils.flop_counter``, plus the CPU fused-attention kernels it misses.

torch's counter has formulas for the CUDA flash/efficient SDPA kernels but counts the CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``) as 0 FLOPs; we register the standard formulas:
forward ``2*b*h*n*m*(d_qk + d_v)`` (scores and weighted values), backward twice that.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

aten = torch.ops.aten


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    b, h, n, d_qk = q_shape
    m, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * n * m * (d_qk + d_v)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)


def count_flops(fn) -> int:
    """Total FLOPs of calling ``fn()`` (forward and, if ``fn`` calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
