"""The 3D heatmap network: a small 3D U-Net in plain torch, and its loss.

One Gaussian heatmap per particle type (beta-amylase included) on a grid of half
the input's resolution: the input is the zarr's level 1 (~20 A per voxel), a learned
stride-2 stem takes it to ~40 A, where the U-Net (three scales) works and answers.
Plain torch rather than MONAI's ``BasicUNet`` / ``UNet``: torch is preinstalled on
Kaggle while MONAI is not, so the offline archive needs no new package, and the
network is small and readable: ~0.08 M parameters (0.3 MB) at the default widths 12/24/32,
0.33 M (1.3 MB) at the shipped 24/48/64 (a bundle's ``heatmap.json`` names its widths; a wider
network can start from narrower weights, :func:`widen_state_dict`). With channels-last memory
a whole 92 x 315 x 315 level-1 tomogram runs in seconds on 2 CPU cores; a full-resolution
decoder (measured first) cost five times as much.
"""
from __future__ import annotations

import torch
from torch import nn

#: Input sides must be multiples of this (three stride-2 stages).
SIZE_MULTIPLE = 8
#: The output grid is this many input voxels apart (the learned stride-2 stem).
OUTPUT_STRIDE = 2


def _block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    pad = kernel // 2 if stride == 1 else 0
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class HeatmapUNet(nn.Module):
    """3D U-Net: ``(N, 1, Z, Y, X)`` normalised voxels -> ``(N, n_classes, Z/2, Y/2, X/2)`` logits.

    ``Z, Y, X`` must be multiples of :data:`SIZE_MULTIPLE`. A learned stride-2 stem
    (2x2x2 kernel) takes the input to the output grid; two more stride-2 stages
    give context out to ~80 input voxels. ``channels``: widths at 1/2, 1/4 and 1/8
    of the input's resolution.
    """

    def __init__(self, n_classes: int = 6, channels: tuple[int, int, int] = (12, 24, 32)):
        super().__init__()
        c0, c1, c2 = channels
        self.n_classes = n_classes
        self.stem = _block(1, c0, kernel=2, stride=2)
        self.enc0 = _block(c0, c0)
        self.down1 = _block(c0, c1, kernel=2, stride=2)
        self.enc1 = _block(c1, c1)
        self.down2 = _block(c1, c2, kernel=2, stride=2)
        self.enc2 = _block(c2, c2)
        self.up2 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _block(c1, c1)
        self.up1 = nn.ConvTranspose3d(c1, c0, 2, stride=2)
        self.dec0 = _block(c0, c0)
        self.head = nn.Conv3d(c0, n_classes, 1)
        nn.init.constant_(self.head.bias, -4.0)  # start near "no particle" (focal-loss practice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.enc0(self.stem(x))
        s1 = self.enc1(self.down1(s0))
        b = self.enc2(self.down2(s1))
        d1 = self.dec1(self.up2(b) + s1)
        d0 = self.dec0(self.up1(d1) + s0)
        return self.head(d0)


def widen_state_dict(state: dict, net: HeatmapUNet) -> dict:
    """``state`` (weights of a narrower :class:`HeatmapUNet`) laid into ``net``'s wider shapes, function-preserving.

    Each old tensor fills the leading corner of the new one. The new channels get ``net``'s own
    fresh weights on their inputs (so they compute something) and exactly zero weight on every
    path into an old channel or the head, so the wider network's output equals the narrower
    one's (training mode too: batch norm is per channel); training then grows the zero weights.
    Everything else of the new channels is ``net``'s own (a fresh network: identity batch norm).
    Raises ``ValueError`` for another class count or a network narrower than ``state``.
    """
    new = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if set(state) != set(new):
        raise ValueError(f"not the same network: keys {sorted(set(state) ^ set(new))[:4]} differ")
    if state["head.weight"].shape[0] != new["head.weight"].shape[0]:
        raise ValueError(f"the weights predict {state['head.weight'].shape[0]} classes, the network "
                         f"{new['head.weight'].shape[0]}")
    in_dim = {}  # weight key -> the dimension of its input channels
    for name, module in net.named_modules():
        if isinstance(module, nn.ConvTranspose3d):
            in_dim[f"{name}.weight"] = 0
        elif isinstance(module, nn.Conv3d):
            in_dim[f"{name}.weight"] = 1
    for key, old in state.items():
        target = new[key]
        if old.dim() != target.dim() or any(o > t for o, t in zip(old.shape, target.shape)):
            raise ValueError(f"{key}: {tuple(old.shape)} does not fit in {tuple(target.shape)}")
        if key in in_dim:
            d = in_dim[key]
            out_dim = 1 - d
            # old outputs read nothing from new inputs
            index = [slice(None)] * target.dim()
            index[out_dim] = slice(0, old.shape[out_dim])
            index[d] = slice(old.shape[d], None)
            target[tuple(index)] = 0
        target[tuple(slice(0, n) for n in old.shape)] = old
    return new


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks.

    ``target`` holds Gaussians in 0..1 with exactly 1 at each particle's voxel;
    voxels near a particle are penalised less (``(1 - target) ** beta``) for firing.
    """
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target >= 1.0 - 1e-6
    pos_loss = -(torch.log(p) * (1 - p) ** alpha)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p**alpha * (1 - target) ** beta)[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
