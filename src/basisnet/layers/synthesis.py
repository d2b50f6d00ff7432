"""One fused kernel synthesis for a whole network: every basis layer mixed by a single batched matmul.

Mixing layer by layer costs one small matmul per basis layer (32-44 of them in the bundled specialists);
at batch 1 their overheads, not their multiply-adds, set the time. ``PackedBases`` copies every layer's
bases (weights, then biases) into one buffer cut into chunks of equal length, each chunk belonging to one
layer: shape (K, N, C). A coefficient set (L, N) becomes one row per chunk by a gather, and one
``bmm((K, 1, N), (K, N, C))`` writes every layer's kernel, read back as views. The bases are read once,
which is the floor of any synthesis. The same arithmetic is what the exported batch-1 graph runs.

The result is ``SynthesizedKernels`` (``basisnet.layers.weights``): what a network passes its layers
instead of coefficients once they are mixed; a basis layer given its kernel runs one plain conv / linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .weights import Kernel, SynthesizedKernels

__all__ = ["PackedBases", "PackedMixer"]


# What one more chunk costs beside the floats it reads, in floats: a small matmul's fixed cost (about
# 0.2 us in ONNX Runtime on this project's 2-core CPU, timed by hand) at a memory rate of about 20 GB/s.
CHUNK_COST_FLOATS = 1024


def _chunk_size(sizes: Sequence[int], num_bases: int) -> int:
    """Chunk length (a power of two, 16 to 8192) that minimises the floats read, padding included, plus a
    fixed cost per chunk: short chunks waste little padding but each is one more small matmul."""
    def cost(chunk: int) -> int:
        chunks = sum(-(-size // chunk) for size in sizes)
        return num_bases * chunks * chunk + CHUNK_COST_FLOATS * chunks

    return min((2**i for i in range(4, 14)), key=cost)


class PackedBases:
    """A packed copy of the bases of ``layers`` (basis layers of one network, in coefficient-row order).

    A snapshot: ``matches`` tells whether the layers' parameters changed since (an optimizer step, a
    load, a move)."""

    def __init__(self, layers: Sequence[nn.Module], chunk: int | None = None) -> None:
        if not layers:
            raise ValueError("PackedBases needs at least one basis layer")
        n = layers[0].num_bases
        if any(layer.num_bases != n for layer in layers):
            raise ValueError("PackedBases: every layer must have the same number of bases")
        with torch.no_grad():
            flats = [torch.cat([p.reshape(n, -1) for p in self._params(layer)], 1) for layer in layers]
        self.chunk = chunk or _chunk_size([f.shape[1] for f in flats], n)
        counts = [-(-f.shape[1] // self.chunk) for f in flats]
        padded = [nn.functional.pad(f, (0, c * self.chunk - f.shape[1])) for f, c in zip(flats, counts)]
        # (N, K * C) -> (K, N, C): each chunk's N basis rows next to each other
        self.packed = torch.cat(padded, 1).view(n, -1, self.chunk).transpose(0, 1).contiguous()
        self.chunk_layer = torch.repeat_interleave(torch.arange(len(layers), device=self.packed.device),
                                                   torch.tensor(counts, device=self.packed.device))
        self.shapes = [[tuple(p.shape[1:]) for p in self._params(layer)] for layer in layers]
        # One split of the mixed buffer: per layer its weight, its bias if any, then the padding.
        self.pieces: list[int] = []
        for shapes, count in zip(self.shapes, counts):
            sizes = [int(torch.Size(shape).numel()) for shape in shapes]
            self.pieces += [*sizes, count * self.chunk - sum(sizes)]
        self._versions = self._version_key(layers)

    @staticmethod
    def _params(layer: nn.Module) -> list[Tensor]:
        return [layer.weight] if layer.bias is None else [layer.weight, layer.bias]

    @classmethod
    def _version_key(cls, layers: Sequence[nn.Module]) -> tuple:
        return tuple((id(p), p._version, p.device, p.dtype) for layer in layers for p in cls._params(layer))

    def matches(self, layers: Sequence[nn.Module]) -> bool:
        """Whether the copy still holds ``layers``' current bases (no optimizer step, load or move since)."""
        return self._versions == self._version_key(layers)

    def mix(self, coeffs: Tensor) -> Tensor:
        """Every layer's kernel, flat and padded, for one coefficient set (L, N): one gather, one bmm."""
        rows = coeffs.to(self.packed.dtype)[self.chunk_layer]  # (K, N)
        return torch.bmm(rows.unsqueeze(1), self.packed).reshape(-1)

    def unpack(self, flat: Tensor) -> SynthesizedKernels:
        """Per-layer views of ``mix``'s output (one split: a single node in an exported graph)."""
        pieces = iter(flat.split(self.pieces))
        kernels = []
        for shapes in self.shapes:
            tensors = [next(pieces).view(shape) for shape in shapes]
            next(pieces)  # padding
            kernels.append(Kernel(tensors[0], tensors[1] if len(tensors) > 1 else None))
        return SynthesizedKernels(tuple(kernels))


class PackedMixer(nn.Module):
    """The fused synthesis as a module of its own (no parameters), so multiply-add counters report it
    as kernel synthesis (``<network>.mixer``), like the per-layer ``BasisMixer``."""

    def forward(self, packed: PackedBases, coeffs: Tensor) -> SynthesizedKernels:
        return packed.unpack(packed.mix(coeffs))
