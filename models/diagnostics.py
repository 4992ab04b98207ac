"""What the attention does: per-layer, per-head statistics of the attention weights.

:func:`attention_stats` turns weights into the numbers; :class:`AttentionDiagnostics` is the
Lightning callback that logs them on a few validation batches every validation epoch, and
:func:`attention_maps` reads a checkpoint's weights for one input (the report's heatmaps).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from .attention import forms_weights
from .classification import ClassificationModule


def attention_stats(weights: Tensor, query_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Mean entropy (nats) and mean max weight per head of ``weights: [B, H, Lq, Lk]``.

    Rows are renormalised to sum to one before the entropy (so unnormalised kinds such as sigmoid
    attention get the entropy of their weight shape); ``query_mask: [B, Lq]`` (True = a real
    query) excludes padding queries and rows with no weight at all. Returns ``[H]`` tensors.
    """
    w = weights.detach().double().clamp_min(0)
    total = w.sum(-1, keepdim=True)
    valid = total.squeeze(-1) > 0  # [B, H, Lq]
    if query_mask is not None:
        valid = valid & query_mask[:, None, :]
    p = w / total.clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # [B, H, Lq]
    peak = w.amax(-1)
    n = valid.sum(dim=(0, 2)).clamp_min(1)
    return {
        "entropy": (entropy * valid).sum(dim=(0, 2)) / n,
        "max_weight": (peak * valid).sum(dim=(0, 2)) / n,
    }


class AttentionDiagnostics(L.Callback):
    """Logs ``attn/l{layer}h{head}/{entropy,max_weight}`` on the first ``batches`` validation batches.

    Kinds that form no weight matrix (``linear``) log nothing. With a W&B logger, ``images`` also
    logs the layer-by-layer head-mean attention map of the first validation example.
    """

    def __init__(self, batches: int = 2, images: bool = True) -> None:
        super().__init__()
        self.batches, self.images = batches, images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.batches < 1:
            return
        net = getattr(pl_module, "net", None)
        encoder = getattr(net, "encoder", None)
        if (
            not hasattr(net, "padding_mask")
            or encoder is None
            or not forms_weights(encoder.blocks[0].attn.kind)
        ):
            return  # single-stack models only (not the encoder-decoder); kinds that form weights
        layers = len(encoder.blocks)
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        sums: dict[str, Tensor] = {}
        first: list[Tensor] | None = None
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for i, (inputs, _) in enumerate(loader):
                if i >= self.batches:
                    break
                inputs = inputs.to(pl_module.device)
                _, weights = net(inputs, need_weights=True)
                keep = net.padding_mask(inputs)  # [B, L] real (not padded) positions
                for layer, w in enumerate(weights[:layers]):  # a classifier's pooling weights come last
                    for stat, per_head in attention_stats(w, keep).items():
                        for head, value in enumerate(per_head):
                            key = f"attn/l{layer}h{head}/{stat}"
                            sums[key] = sums.get(key, 0.0) + value
                if first is None:
                    first = [w[0].mean(0).cpu() for w in weights[:layers]]
                    n_real = int(keep[0].sum())
        net.train(was_training)
        n = min(self.batches, len(loader))
        if sums:
            pl_module.log_dict({k: float(v) / n for k, v in sums.items()}, sync_dist=True)
        if self.images and first is not None:
            self._log_images(trainer, first, n_real)

    @staticmethod
    def _log_images(trainer: L.Trainer, maps: list[Tensor], n_real: int) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                images = [(m[:n_real, :n_real] / m.max().clamp_min(1e-12) * 255).byte().numpy() for m in maps]
                captions = [f"layer {i}, mean over heads" for i in range(len(maps))]
                logger.log_image(key="attn/maps", images=images, caption=captions, step=trainer.global_step)


def attention_maps(checkpoint: str, token_ids: list[int]) -> list[Tensor]:
    """Head-mean attention weights ``[L, L]`` per layer, plus the pooling weights ``[1, L]``, of a
    :class:`~attn.models.classification.ClassificationModule` checkpoint for one input."""
    module = ClassificationModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    module.eval()
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        _, weights = module.net(ids, need_weights=True)
    out: list[Tensor] = []
    for w in weights:
        out.append(
            w[0].mean(0) if w is not None else torch.full((len(token_ids), len(token_ids)), float("nan"))
        )
    return out
