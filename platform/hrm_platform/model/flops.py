"""Model FLOPs of the HRM from its config: what a segment costs, forward and backward, per sample.

Counted as in MFU accounting (PaLM, appendix B): every matrix multiply at 2 FLOPs per multiply-add, the
attention score and value products included, elementwise work (norms, rotary, activations) left out, and
backward at 2x the forward of what it differentiates (no recomputation counted, so gradient checkpointing
does not raise the figure). T = window + 1 tokens (the bars and the summary token), D = d_model,
Hf = the SwiGLU width, F = input features.

    block (per sample)    T * (2*D*3D + 2*D*D + 2*D*2Hf + 2*Hf*D)    qkv, out, gate_up, down
                          + 2 * 2*T*T*D                               Q K^T and attention x V, all heads
    embed                 2 * W * F * D                               input projection of the W bars
    heads                 2 * D * (3 + 1 + 2)                         action, quantity, (q_halt, q_continue)

One segment runs h_cycles * l_cycles applications of the L module (l_layers blocks each) and h_cycles of
the H module (the transformer arch: h_layers + l_layers blocks once); training records only the last L
and the last H (the one-step gradient; last_cycle: the last cycle's l_cycles L updates and its H) and the
embedding and heads, so a one-step training segment costs

    forward  = embed + (h_cycles*l_cycles*l_layers + h_cycles*h_layers) * block + heads
    backward = 2 * ((l_layers + h_layers) * block + heads) + embed     (the windows need no gradient: the
                                                                        input projection's weight grad only)

Inference embeds once per request and runs the segment without backward.

    training_flops_per_sample_segment(ModelConfig(), window=64, n_features=10)
"""

from __future__ import annotations

from hrm_platform.config import ModelConfig
from hrm_platform.model.layers import swiglu_hidden_dim

HEAD_OUTPUTS = 3 + 1 + 2  # action logits, quantity, (q_halt, q_continue)


def block_flops(config: ModelConfig, n_tokens: int) -> float:
    """Forward FLOPs of one transformer block on one sample of n_tokens tokens."""
    d_model = config.d_model
    hidden = swiglu_hidden_dim(d_model, config.ff_mult)
    projections = 2 * d_model * 3 * d_model + 2 * d_model * d_model + 2 * d_model * 2 * hidden + 2 * hidden * d_model
    attention = 2 * (2 * n_tokens * n_tokens * d_model)
    return float(n_tokens * projections + attention)


def embed_flops(config: ModelConfig, window: int, n_features: int) -> float:
    return float(2 * window * n_features * config.d_model)


def heads_flops(config: ModelConfig) -> float:
    return float(2 * config.d_model * HEAD_OUTPUTS)


def blocks_per_segment(config: ModelConfig) -> int:
    """Block applications in one segment's forward (L: h_cycles*l_cycles times, H: h_cycles times; the
    transformer arch: its h_layers + l_layers blocks once)."""
    if config.arch == "transformer":
        return config.h_layers + config.l_layers
    return config.h_cycles * config.l_cycles * config.l_layers + config.h_cycles * config.h_layers


def recorded_blocks_per_segment(config: ModelConfig) -> int:
    """Block applications that training differentiates in one segment (model.gradient)."""
    if config.arch == "transformer":
        return config.h_layers + config.l_layers
    recorded_l_updates = config.l_cycles if config.gradient == "last_cycle" else 1
    return recorded_l_updates * config.l_layers + config.h_layers


def segment_forward_flops(config: ModelConfig, window: int) -> float:
    """One segment's recurrent updates and heads, forward, per sample (no embedding)."""
    return blocks_per_segment(config) * block_flops(config, window + 1) + heads_flops(config)


def training_flops_per_sample_segment(config: ModelConfig, window: int, n_features: int) -> float:
    """One deep-supervision segment on one sample: forward (embedding included) + one-step-gradient backward."""
    block = block_flops(config, window + 1)
    embed = embed_flops(config, window, n_features)
    forward = embed + segment_forward_flops(config, window)
    recorded = recorded_blocks_per_segment(config) * block + heads_flops(config)
    return forward + 2 * recorded + embed


def inference_flops_per_sample(config: ModelConfig, window: int, n_features: int, segments: int) -> float:
    """ACT inference of one window for `segments` segments: one embedding, then the segments' forwards."""
    return embed_flops(config, window, n_features) + segments * segment_forward_flops(config, window)
