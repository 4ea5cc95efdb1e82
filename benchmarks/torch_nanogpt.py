"""A nanoGPT-style GPT-2 in plain torch: the peer that `benchmarks/bench.py` times next to tf_gpt2.

Same architecture and numerics as karpathy/nanoGPT's model.py (fused QKV, PyTorch's fused causal
scaled_dot_product_attention, GPT-2's three dropouts, GELU tanh, pre-LN, tied head); needs torch, which is not a
core dependency.


>>> import torch
>>> from tf_gpt2 import GPT2Config
>>> model = NanoGPT(GPT2Config.from_preset("gpt2-tiny", vocab_size=100))
>>> model(torch.zeros(1, 8, dtype=torch.long)).shape
torch.Size([1, 8, 100])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # the peer's process holds no TensorFlow: its config comes from harness.tensorflow_free
    from tf_gpt2.config import GPT2Config


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head, self.attn_pdrop = cfg.n_head, cfg.dropout_rate("attn_pdrop")
        self.resid_drop = nn.Dropout(cfg.dropout_rate("resid_pdrop"))
        self.ln_1, self.ln_2 = (nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon) for _ in range(2))
        self.c_attn, self.attn_proj = nn.Linear(cfg.n_embd, 3 * cfg.n_embd), nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.attn_pdrop if self.training else 0.0)
        x = x + self.resid_drop(self.attn_proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.resid_drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout_rate("embd_pdrop"))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device)))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # LM head tied to the token embedding

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding as nanoGPT does it: the whole sequence again for each new token (no KV cache)."""
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, self(ids)[:, -1:].argmax(-1)], dim=1)
        return ids
