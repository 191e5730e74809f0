"""data2vec 1.0: a student regresses, at masked positions, the teacher's averaged top-K layers.

    student:  encoder(masked input)  --head-->  pred [N, D]       (N = number of masked positions)
    teacher:  EMA encoder(unmasked input), top-K layers --norm, average--> y [N, D]   (no gradient)
    loss:     regression_loss(pred, y)        then, after optimizer.step(): model.ema_step()
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import Data2VecConfig
from .ema import EMATeacher
from .encoder import build_encoder
from .errors import ConfigError
from .init import init_head
from .inputs import check_source
from .loss import RegressionHead, feature_std, regression_loss
from .masking import block_mask, check_mask, span_mask, text_mask
from .targets import build_targets, target_layers


@dataclass
class Data2VecOutput:
    """loss: scalar; pred, target: [N, D] at the N masked positions; mask: bool [B, T] (True = masked,
    the positions the loss covers); target_var / pred_var: fairseq's collapse statistics (the mean over
    channels of each channel's std across masked positions); ema_decay: the teacher's current tau."""

    loss: Tensor
    pred: Tensor
    target: Tensor
    mask: Tensor
    target_var: Tensor
    pred_var: Tensor
    ema_decay: float
    num_masked: int

    def stats(self) -> dict[str, float]:
        """Plain floats for logging (this synchronises with the device)."""
        return {"loss": self.loss.item(), "target_var": self.target_var.item(), "pred_var": self.pred_var.item(),
                "ema_decay": self.ema_decay, "num_masked": self.num_masked}


class Data2Vec(nn.Module):
    def __init__(self, cfg: Data2VecConfig):
        super().__init__()
        cfg.validate()  # a ConfigError names a field of the wrong type or out of range
        if cfg.version != 1:
            raise ConfigError(f"Data2Vec is data2vec 1.0; this config has version = {cfg.version}: build it with "
                              f"data2vec2.build_model(cfg) (Data2Vec2)")
        self.cfg = cfg
        self.student = build_encoder(cfg)
        self.head = RegressionHead(cfg.encoder.dim, cfg.loss.head_layers)
        if cfg.encoder.init == "released":
            init_head(self.head, cfg.modality)
        self.teacher = EMATeacher(self.student, cfg.ema)

    @torch.no_grad()
    def ema_step(self) -> float:
        """Move the teacher towards the student; call once after every optimizer step."""
        return self.teacher.step(self.student)

    def make_mask(self, source: Tensor, padding_mask: Tensor | None = None,
                  generator: torch.Generator | None = None):
        """Draw the recipe's mask for a batch.

        speech/image: returns mask bool [B, T] over frames / patches.
        text: returns a `TextMask` (corrupted tokens, selected positions, `<mask>` positions)."""
        source, padding_mask = self.check_inputs(source, padding_mask)
        m, enc = self.cfg.masking, self.cfg.encoder
        if self.cfg.modality == "speech":
            if padding_mask is not None:
                lengths = self.student.feature_encoder.output_length((~padding_mask).sum(1))
            n = self.student.feature_encoder.output_length(source.shape[1])
            frame_pm = None if padding_mask is None else torch.arange(n, device=source.device) >= lengths[:, None]
            return span_mask((source.shape[0], n), prob=m.prob, length=m.length, padding_mask=frame_pm,
                             min_masks=m.min_masks, require_same_masks=m.require_same_masks,
                             generator=generator, device=source.device)
        if self.cfg.modality == "image":
            return block_mask(source.shape[0], self.student.grid, num_patches=m.num_patches, min_block=m.min_block,
                              min_aspect=m.min_aspect, generator=generator, device=source.device)
        return text_mask(source, mask_idx=enc.mask_idx, vocab_size=enc.vocab_size, prob=m.prob, length=m.length,
                         random_token_prob=m.random_token_prob, leave_unmasked_prob=m.leave_unmasked_prob,
                         special_ids=(enc.bos_idx, enc.pad_idx, enc.eos_idx), pad_idx=enc.pad_idx,
                         generator=generator)

    def forward(self, source: Tensor, padding_mask: Tensor | None = None, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Data2VecOutput:
        """source: speech [B, N] float / images [B, C, H, W] / tokens [B, T] long;
        padding_mask: bool, True = padding (speech: [B, N] samples; text: [B, T], default tokens == pad);
        mask: bool [B, T] over frames / patches / tokens, True = masked (drawn from the recipe if None;
        for text a given mask is filled with `<mask>` and is where the loss is computed).
        Inputs are checked first (inputs.check_source: shapes, dtypes, NaN/Inf, padding), floats cast to
        the weights' dtype."""
        source, padding_mask = self.check_inputs(source, padding_mask)
        student_input = source
        if mask is None:
            drawn = self.make_mask(source, padding_mask, generator)
            if self.cfg.modality == "text":
                student_input = drawn.tokens
                mask = drawn.mask if self.cfg.masking.loss_on_all_selected else drawn.replaced
            else:
                mask = drawn
        elif self.cfg.modality == "text":
            student_input = source.masked_fill(check_mask(mask, tuple(source.shape)), self.cfg.encoder.mask_idx)

        # student: masked input
        features, frame_pm = self.student.embed(student_input, padding_mask)
        mask = check_mask(mask, tuple(features.shape[:2]))
        if frame_pm is not None:
            mask = mask & ~frame_pm  # padding is never a prediction target
        student_mask = None if self.cfg.modality == "text" else mask
        out = self.student.forward_features(features, student_mask, frame_pm)
        x = out.last_hidden_state[:, 1:] if self.student.has_cls else out.last_hidden_state
        pred = self.head(x[mask])  # [N, D]

        # teacher: the same example, unmasked; targets in fp32
        with torch.no_grad():
            if self.cfg.ema.teacher_input == "student_features" and self.cfg.modality != "text":
                t_out = self.teacher.model.forward_features(features.detach(), None, frame_pm)
            else:
                t_out = self.teacher.model(source, None, padding_mask)
            layers = target_layers(t_out, self.cfg.targets)
            if self.student.has_cls:
                layers = [t[:, 1:] for t in layers]
            y = build_targets(layers, self.cfg.targets, frame_pm)[mask]  # [N, D]

        loss = regression_loss(pred, y, self.cfg.loss)
        return Data2VecOutput(loss=loss, pred=pred, target=y, mask=mask, target_var=feature_std(y),
                              pred_var=feature_std(pred.detach()), ema_decay=self.teacher.decay,
                              num_masked=int(y.shape[0]))

    def check_inputs(self, source, padding_mask=None) -> tuple[Tensor, Tensor | None]:
        """inputs.check_source for this model: raises InputError, casts floats to the weights' dtype."""
        dtype = next(self.head.parameters()).dtype
        return check_source(self.cfg.modality, source, padding_mask, dtype,
                            pad_idx=self.cfg.encoder.pad_idx if self.cfg.modality == "text" else None)

    def encoder_params(self) -> int:
        return self.student.num_params()

