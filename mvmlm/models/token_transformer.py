"""Token transformer of MV-MLM: features -> tokens -> 4 pre-norm transformer layers -> global max pool -> embedding.

Image side: a feature map ``(B, C, h, w)`` is flattened to ``h * w`` pseudo-tokens of ``C`` channels; a linear map
along the token axis turns them into ``num_tokens`` (256) tokens, and a linear map along the channels into the
width ``d``. The token-axis map is built for one grid ``(h, w)``; a feature map of another size (another input
resolution) is first resized to that grid by bilinear interpolation (antialiased when shrinking), so a model
pretrained at 1520x912 runs at 512x512 and vice versa.

Text side: a token sequence ``(B, L, C)`` with a padding mask ``(B, L)`` (True / 1 = real token, as Hugging Face's
``attention_mask``) skips the token-axis map; padded tokens are ignored by attention and by the max pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TokenTransformer"]


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
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
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
        return self.token_map(x.flatten(2)).transpose(1, 2)  # (B, C, h*w) -> (B, C, num_tokens) -> (B, N, C)

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
        h = self.channel_map(tokens)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(layer, h, src_key_padding_mask=padding, use_reentrant=False)
            else:
                h = layer(h, src_key_padding_mask=padding)
        h = self.norm(h)
        pooled = h.amax(dim=1) if padding is None else h.masked_fill(padding[..., None], float("-inf")).amax(dim=1)
        embedding = self.proj(pooled)
        return (embedding, h) if return_tokens else embedding
