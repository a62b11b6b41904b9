"""BERT-family encoders in MLX (mlx-lm has decoders only), for embedding models such as
all-MiniLM-L6-v2 and the other sentence-transformers BERTs.

Module and parameter names follow Hugging Face's `BertModel` checkpoints, so their
safetensors load without renaming; `sanitize` drops what an encoder for embeddings does not
use (the pooler, masked-LM heads, the `position_ids` buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# `model_type`s this module serves; each is a BERT with absolute position embeddings.
ENCODER_TYPES = ("bert",)


@dataclass
class ModelArgs:
    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModelArgs:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


_ACTIVATIONS = {
    "gelu": nn.gelu,  # BERT's "gelu" is the exact (erf) one
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
    "silu": nn.silu,
}


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        # one segment: token type 0 everywhere, as sentence-transformers encodes a sentence
        x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.heads = args.num_attention_heads
        self.query = nn.Linear(args.hidden_size, args.hidden_size)
        self.key = nn.Linear(args.hidden_size, args.hidden_size)
        self.value = nn.Linear(args.hidden_size, args.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, D = x.shape

        def split(t: mx.array) -> mx.array:
            return t.reshape(B, L, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scale = (D // self.heads) ** -0.5
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(B, L, D)


class DenseNorm(nn.Module):
    """A projection, a residual connection and a LayerNorm (BERT's post-norm)."""

    def __init__(self, dim_in: int, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(dim_in, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self = SelfAttention(args)  # HF's name for it
        self.output = DenseNorm(args.hidden_size, args)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.act = _ACTIVATIONS[args.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseNorm(args.intermediate_size, args)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.num_hidden_layers)]


class Model(nn.Module):
    """A BERT encoder: token ids and a padding mask in, one hidden state per token out."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(self, ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Args:
        ids: (batch, length) token ids, right-padded.
        attention_mask: (batch, length), 1 for tokens and 0 for padding.
        """
        x = self.embeddings(ids)
        # padding keys get a large negative score (not -inf: a fully masked row stays finite)
        neg = mx.finfo(x.dtype).min
        mask = mx.where(attention_mask[:, None, None, :].astype(mx.bool_), 0.0, neg)
        mask = mask.astype(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        out = {}
        for name, value in weights.items():
            if name.startswith("bert."):
                name = name[len("bert.") :]
            if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
                continue
            out[name] = value
        return out
