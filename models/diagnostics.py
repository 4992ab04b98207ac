"""What the attention does: per-layer, per-head statistics of the attention weights.

:func:`attention_stats` turns weights into the numbers; :class:`AttentionDiagnostics` is the
Lightning callback that logs them on a few validation batches every validation epoch, and
:func:`attention_maps` reads a checkpoint's weights for one input (the report's heatmaps).
"""

from __future__ import annotations

import inspect

import lightning as L
import torch
from torch import Tensor

from .attention import forms_weights
from .classification import ClassificationModule

SINK_EPSILON = 0.3  # Gu et al. (ICLR 2025): a head "sinks" when its mean weight on the first token exceeds it


def attention_stats(weights: Tensor, query_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Per head of ``weights: [B, H, Lq, Lk]``, averaged over the rows of real queries: the entropy (nats),
    the largest weight (how sharp a row is: Veličković et al. 2024 prove it falls as keys are added), and
    the weight on the first token (whose mean over a head's rows, past :data:`SINK_EPSILON`, makes the
    head an attention sink, Gu et al. 2025).

    Rows are renormalised to sum to one before the entropy (so unnormalised kinds such as sigmoid
    attention get the entropy of their weight shape; a negative weight, differential attention's, counts
    as 0 there); ``query_mask: [B, Lq]`` (True = a real query) excludes padding queries and rows with no
    weight at all. Returns ``[H]`` tensors.
    """
    w = weights.detach()
    if query_mask is not None:  # only the rows of real queries are computed: [rows, H, Lk]
        w = w.transpose(1, 2)[query_mask.expand(w.shape[0], -1)]
    else:
        w = w.transpose(1, 2).reshape(-1, w.shape[1], w.shape[-1])
    w = w.double().clamp_min(0)
    total = w.sum(-1, keepdim=True)
    valid = total.squeeze(-1) > 0  # [rows, H]: rows with some weight
    p = w / total.clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # [rows, H]
    peak = w.amax(-1)
    first = w[..., 0]
    n = valid.sum(dim=0).clamp_min(1)
    return {
        "entropy": (entropy * valid).sum(dim=0) / n,
        "max_weight": (peak * valid).sum(dim=0) / n,
        "first_weight": (first * valid).sum(dim=0) / n,
    }


def sink_rate(first_weight: Tensor) -> float:
    """The share of heads whose mean weight on the first token exceeds :data:`SINK_EPSILON`."""
    return float((first_weight > SINK_EPSILON).double().mean())


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
        # a next-token model's head is not needed here (over a large vocabulary, most of the cost)
        no_head = "at" in inspect.signature(net.forward).parameters
        net.eval()
        with torch.no_grad():
            for i, (inputs, _) in enumerate(loader):
                if i >= self.batches:
                    break
                inputs = inputs.to(pl_module.device)
                at = {"at": torch.zeros_like(inputs, dtype=torch.bool)} if no_head else {}
                _, weights = net(inputs, need_weights=True, **at)
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
