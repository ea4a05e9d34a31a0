"""Independent float64 reference computations for the tests (plain loops, no einops/SDPA)."""

import math

import torch
import torch.nn.functional as F


def linear(x, layer):
    return x.double() @ layer.weight.double().T + layer.bias.double()


def attention(mha, x_q, x_kv, mask=None, bias=None):
    """float64 multi-head attention, head by head; rows with every key masked give zeros.
    ``bias [B, H or 1, M]`` is added to head h's scores (-inf drops a key) instead of a mask."""
    if bias is not None:
        mask = torch.isfinite(bias[:, 0])
    q, k, v = linear(x_q, mha.q_proj), linear(x_kv, mha.k_proj), linear(x_kv, mha.v_proj)
    heads = mha.num_heads
    dq, dv = q.shape[-1] // heads, v.shape[-1] // heads
    outs = []
    for b in range(q.shape[0]):
        per_head = []
        for h in range(heads):
            qh, kh = q[b, :, h * dq:(h + 1) * dq], k[b, :, h * dq:(h + 1) * dq]
            vh = v[b, :, h * dv:(h + 1) * dv]
            scores = qh @ kh.T / math.sqrt(dq)
            if bias is not None:
                scores = scores + bias[b, h % bias.shape[1]].double()[None, :]
            if mask is not None:
                keep = mask[b].bool()
                if not keep.any():
                    per_head.append(torch.zeros(qh.shape[0], dv, dtype=torch.float64))
                    continue
                scores = scores.masked_fill(~keep[None, :], float("-inf"))
            per_head.append(torch.softmax(scores, dim=-1) @ vh)
        outs.append(torch.cat(per_head, dim=-1))
    out = linear(torch.stack(outs), mha.o_proj)
    if mask is not None:
        out[~mask.bool().any(dim=1)] = 0.0
    return out


def layer_norm(x, norm):
    return F.layer_norm(x.double(), norm.normalized_shape, norm.weight.double(), norm.bias.double(),
                        norm.eps)


def mlp(x, m):
    return linear(F.gelu(linear(x, m.fc1)), m.fc2)


def cross_attention_layer(layer, x_q, x_kv, mask=None):
    x = attention(layer.attention, layer_norm(x_q, layer.q_norm), layer_norm(x_kv, layer.kv_norm), mask)
    if layer.query_residual:
        x = x + x_q.double()
    return x + mlp(layer_norm(x, layer.mlp_norm), layer.mlp)


def self_attention_layer(layer, x):
    h = layer_norm(x, layer.norm)
    x = x.double() + attention(layer.attention, h, h)
    return x + mlp(layer_norm(x, layer.mlp_norm), layer.mlp)
