"""Lightning module for translation: teacher forcing with label smoothing; BLEU and chrF on decoded text."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import SumMetric

from attn.datamodules.subword import join_pieces
from attn.datamodules.vocab import detokenize

from .seq2seq import Seq2SeqTransformer
from .training import AttnModule, PredictionTable

BOS, EOS = "<s>", "</s>"


class TranslationModule(AttnModule):
    """Trains a :class:`Seq2SeqTransformer`; decodes the test set greedily (``beam=1``) or by beam search.

    Logs ``train/loss``, ``val/loss`` and ``val/token_acc`` (teacher-forced), and on the test split
    ``test/bleu`` and ``test/chrf`` (sacrebleu, on detokenised text), ``test/exact`` (whole-sentence
    match rate), ``test/token_acc`` (teacher-forced), ``test/loss`` and ``test/examples``. Hypotheses and
    references go to ``predictions/test.tsv`` in the run directory, sacrebleu's signatures to the record.
    """

    CAUSAL = False  # its self-attention: the source encoder reads both ways

    def __init__(
        self,
        src_vocab_size: int,
        tgt_tokens: list[str],
        max_target_len: int,
        net: dict[str, Any],
        attention: dict[str, Any],
        label_smoothing: float = 0.1,
        beam: int = 1,
        subword: bool = False,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        self.save_hyperparameters()
        self.tgt_tokens = list(tgt_tokens)
        self.bos, self.eos = self.tgt_tokens.index(BOS), self.tgt_tokens.index(EOS)
        self.max_target_len, self.beam, self.label_smoothing = max_target_len, beam, label_smoothing
        self.subword = subword  # target tokens are subword pieces: joined into words before detokenizing
        self.net = Seq2SeqTransformer(src_vocab_size, len(self.tgt_tokens), attention=attention, **net)
        self.test_examples = SumMetric()
        self._hyps: list[str] = []
        self._refs: list[str] = []
        self._references: list[str] | None = None

    def _loss_and_acc(self, batch: tuple[Tensor, ...], smoothing: float) -> tuple[Tensor, Tensor]:
        src, tgt = batch[0], batch[1]
        logits = self.net(src, tgt[:, :-1])
        gold = tgt[:, 1:]
        loss = F.cross_entropy(logits.transpose(1, 2), gold, ignore_index=0, label_smoothing=smoothing)
        real = gold != 0
        acc = ((logits.argmax(-1) == gold) & real).sum() / real.sum().clamp_min(1)
        return loss, acc

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss_and_acc(batch, self.label_smoothing)
        self.check_loss(loss)
        if self._logging_step():  # the logger writes only these steps
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc = self._loss_and_acc(batch, 0.0)
        n = int(batch[0].shape[0])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/token_acc", acc, prog_bar=True, sync_dist=True, batch_size=n)

    def _text(self, ids: Tensor) -> str:
        words = []
        for i in ids.tolist():
            if i == self.eos or i == 0:
                break
            words.append(self.tgt_tokens[i])
        return detokenize(join_pieces(words) if self.subword else words)

    def translate(self, src: Tensor) -> list[str]:
        """Detokenised translations of a batch of source ids."""
        if self.beam > 1:
            ids = self.net.beam_search(src, self.bos, self.eos, self.max_target_len, self.beam)
        else:
            ids = self.net.greedy(src, self.bos, self.eos, self.max_target_len)
        return [self._text(row) for row in ids]

    def on_test_epoch_start(self) -> None:
        self._hyps, self._refs = [], []
        self._predictions = PredictionTable(["hypothesis", "reference"])
        # Real corpora score against the original sentences (a third batch entry is the row index);
        # generated data against the detokenised target ids.
        dm = getattr(self.trainer, "datamodule", None)
        self._references = dm.test_references() if hasattr(dm, "test_references") else None

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        src, tgt = batch[0], batch[1]
        loss, acc = self._loss_and_acc(batch, 0.0)
        n = int(src.shape[0])
        self.log("test/loss", loss, sync_dist=True, batch_size=n)
        self.log("test/token_acc", acc, sync_dist=True, batch_size=n)
        hyps = self.translate(src)
        if self._references is not None and len(batch) == 3:
            refs = [self._references[i] for i in batch[2].tolist()]
        else:
            refs = [self._text(row[1:]) for row in tgt]
        self._hyps += hyps
        self._refs += refs
        self._predictions.add(self._trainer, [list(pair) for pair in zip(hyps, refs, strict=True)])
        self.test_examples.update(torch.tensor(float(n)))
        self.log("test/examples", self.test_examples)

    def on_test_epoch_end(self) -> None:
        import sacrebleu

        hyps, refs = self._hyps, self._refs
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (hyps, refs))
            hyps = [h for g in gathered for h in g[0]]
            refs = [r for g in gathered for r in g[1]]
        info = self._gather_predictions()
        if not hyps:
            return
        bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
        self.log("test/bleu", bleu.corpus_score(hyps, [refs]).score)
        self.log("test/chrf", chrf.corpus_score(hyps, [refs]).score)
        self.prediction_info = {
            **info,
            "sacrebleu": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        }
        self.log("test/exact", sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(hyps))
