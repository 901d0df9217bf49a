"""Token transformer of MV-MLM: features -> tokens -> 4 pre-norm transformer layers -> global max pool -> embedding.

Image side: a feature map ``(B, C, h, w)`` is flattened to ``h * w`` pseudo-tokens of ``C`` channels; a linear map
along the token axis turns them into ``num_tokens`` (256) tokens, and a linear map along the channels into the
width ``d``. The token-axis map is built for one grid ``(h, w)``; a feature map of another size (another input
resolution) is first resized to that grid by bilinear interpolation (antialiased when shrinking), so a model
pretrained at 1520x912 runs at 512x512 and vice versa.

Text side: a token sequence ``(B, L, C)`` with a padding mask ``(B, L)`` (True / 1 = real token, as Hugging Face's
``attention_mask``) skips the token-axis map; padded tokens are ignored by attention and by the max pool.

Speed: the layers are ``nn.TransformerEncoderLayer``'s parameters and maths with a forward of their own
(:class:`TokenLayer`), whose matrix products go through :func:`linear`: float32 on a CPU, that is torch's oneDNN
kernel instead of ``F.linear``'s BLAS call (MKL: half oneDNN's speed for these shapes on an AMD EPYC). Same maths;
the layers' forward+backward take 0.55x the time of ``nn.TransformerEncoderLayer`` there (ratio (d) of
``benchmarks/pretrain_step.py``). Elsewhere (GPU, autocast, ``torch.backends.mkldnn.enabled`` off, as while
``torch.export`` traces) it is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TokenTransformer", "TokenLayer", "linear"]

#: torch's oneDNN linear kernel (used by its CPU compiler); absent from builds without oneDNN
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with forward and backward products computed by oneDNN (float32 CPU tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _onednn_linear(grad, weight.t(), None) if needs_x else None  # grad @ W
        grad_weight = _weight_grad(rows, x.reshape(-1, x.shape[-1])) if needs_weight else None
        grad_bias = rows.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias


def _weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T @ x`` for ``grad (n, out)`` and ``x (n, in)``; oneDNN is faster with the wider matrix as its weight
    operand (1.3x for 512 -> 2048 features, measured on an AMD EPYC)."""
    if grad.shape[1] > x.shape[1]:
        return _onednn_linear(x.t(), grad.t(), None).t().contiguous()
    return _onednn_linear(grad.t(), x.t(), None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; float32 on a CPU (outside autocast) through oneDNN, see the module doc."""
    use_onednn = (
        _ONEDNN
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )
    return _OneDNNLinear.apply(x, weight, bias) if use_onednn else F.linear(x, weight, bias)


class TokenLayer(nn.TransformerEncoderLayer):
    """A pre-norm (``norm_first``), batch-first transformer layer: ``nn.TransformerEncoderLayer``'s parameters
    (so its checkpoints load) and maths, computed by :func:`linear` and ``F.scaled_dot_product_attention`` on the
    packed projection directly, without ``nn.MultiheadAttention``'s sequence-first transposes and copies."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__(width, heads, hidden, dropout, activation="gelu", batch_first=True, norm_first=True)

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``x (B, L, width)``; ``padding (B, L)`` True at positions to ignore as keys."""
        x = x + self.dropout1(self._attention(self.norm1(x), padding))
        hidden = self.dropout(self.activation(linear(self.norm2(x), self.linear1.weight, self.linear1.bias)))
        return x + self.dropout2(linear(hidden, self.linear2.weight, self.linear2.bias))

    def _attention(self, x: Tensor, padding: Tensor | None) -> Tensor:
        attn = self.self_attn
        batch, length, width = x.shape
        qkv = linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = (t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        keep = None if padding is None else ~padding[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=attn.dropout if self.training else 0.0)
        return linear(out.transpose(1, 2).reshape(batch, length, width), attn.out_proj.weight, attn.out_proj.bias)


class TokenTransformer(nn.Module):
    """Features -> ``(B, embed_dim)`` embedding (and the ``(B, N, width)`` tokens on request).

    Args:
        in_dim: channels of the incoming feature map or hidden size of the incoming tokens.
        embed_dim: size of the pooled, projected embedding.
        grid: ``(h, w)`` of the feature maps the token-axis map is built for; None for token input only (text).
        num_tokens: tokens after the token-axis map (256 in MV-MLM).
        width: transformer width ``d``.
        depth: transformer layers (4 in MV-MLM).
        heads: attention heads (8 in MV-MLM).
        mlp_ratio: feed-forward width / ``width``.
        dropout: dropout inside the transformer layers.
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        *,
        grid: tuple[int, int] | None = None,
        num_tokens: int = 256,
        width: int = 512,
        depth: int = 4,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"token transformer width {width} is not divisible by heads {heads}")
        self.grid = (int(grid[0]), int(grid[1])) if grid is not None else None
        self.token_map = nn.Linear(self.grid[0] * self.grid[1], num_tokens) if self.grid is not None else None
        self.channel_map = nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(TokenLayer(width, heads, int(width * mlp_ratio), dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer layer in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def _feature_map_tokens(self, x: Tensor) -> Tensor:
        if self.token_map is None or self.grid is None:
            raise ValueError("this token transformer was built for token sequences (grid=None), got a feature map")
        if tuple(x.shape[-2:]) != self.grid:
            shrink = x.shape[-2] > self.grid[0] or x.shape[-1] > self.grid[1]
            x = F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False, antialias=shrink)
        # (B, C, h*w) -> (B, C, num_tokens) -> (B, N, C)
        return linear(x.flatten(2), self.token_map.weight, self.token_map.bias).transpose(1, 2)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed a feature map ``(B, C, h, w)`` or a token sequence ``(B, L, C)`` with optional ``mask (B, L)``.

        Returns:
            ``(B, embed_dim)`` embeddings, or ``(embeddings, tokens)`` with ``tokens (B, N, width)`` (after the
            final norm; rows at padded positions carry no meaning) when ``return_tokens``.
        """
        if x.ndim == 4:
            if mask is not None:
                raise ValueError("a padding mask applies to token sequences (B, L, C), not to feature maps")
            tokens = self._feature_map_tokens(x)
        elif x.ndim == 3:
            tokens = x
        else:
            raise ValueError(f"expected a feature map (B, C, h, w) or tokens (B, L, C), got {tuple(x.shape)}")
        padding = None
        if mask is not None:
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape[:2])}")
            padding = ~mask.bool()
            if bool(padding.all(dim=1).any()):
                raise ValueError("a sequence in the batch has no unmasked token")
        h = linear(tokens, self.channel_map.weight, self.channel_map.bias)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(layer, h, padding, use_reentrant=False)
            else:
                h = layer(h, padding)
        h = self.norm(h)
        pooled = h.amax(dim=1) if padding is None else h.masked_fill(padding[..., None], float("-inf")).amax(dim=1)
        embedding = linear(pooled, self.proj.weight)
        return (embedding, h) if return_tokens else embedding
