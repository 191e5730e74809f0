"""data2vec 2.0: the 1.0 teacher targets at a fraction of the cost (Baevski et al. 2022).

    features = student front end(x)                                  once per sample       [B, T, D]
    M clones: features.repeat_interleave(M), one mask each                                   [B M, T]
    student:  blocks(visible tokens only)  --conv decoder, noise at masked slots-->  pred  [B M, T, D]
    teacher:  EMA encoder(unmasked x), once per sample: top-K layers, per-layer norm, mean, final norm
              y [B, T, D]  ->  y.repeat_interleave(M)  (every clone regresses the same target)
    loss:     sum_d (pred - y)^2 * scale at the masked positions, / #masked over all clones
              (+ images: cls_loss * sum over clones of sum_d (CLS - mean_t y)^2 * scale)

What the teacher shares with the student is cfg.ema.shared / teacher_input, as released: speech runs the
student's CNN features through its own EMA conv positions, ALiBi scale and blocks; images run the EMA
copy of everything on the raw image; text runs the EMA blocks on the student's embeddings.
"""
from __future__ import annotations

import torch
from einops import reduce, repeat
from torch import Tensor, nn

from .config import Data2VecConfig
from .data2vec import Data2Vec, Data2VecOutput
from .decoder import Decoder
from .ema import EMATeacher
from .encoder import build_encoder
from .init import init_decoder
from .loss import feature_std, regression_loss
from .masking import check_mask
from .masking_v2 import block_mask_1d, inverse_block_mask_2d, keep_indices, random_mask
from .targets import build_targets, target_layers


class Data2Vec2(nn.Module):
    def __init__(self, cfg: Data2VecConfig):
        super().__init__()
        cfg.validate()  # a ConfigError names a field of the wrong type or out of range (validate.py)
        if cfg.version != 2 or cfg.v2 is None or getattr(cfg.encoder, "version", 1) != 2:
            raise ValueError("Data2Vec2 needs a 2.0 config: version=2, a `v2` section and a 2.0 encoder config "
                             "(presets '*_v2', d2v_mini/config_v2.py)")
        shared_blocks = cfg.encoder.depth - cfg.encoder.prenet_depth
        if cfg.targets.top_k > shared_blocks:
            raise ValueError(f"targets.top_k {cfg.targets.top_k} > {shared_blocks} shared blocks (depth "
                             f"{cfg.encoder.depth} - prenet_depth {cfg.encoder.prenet_depth}): prenet blocks never "
                             f"give targets")
        self.cfg = cfg
        self.student = build_encoder(cfg)
        grid = getattr(self.student, "grid", None)
        self.decoder = Decoder(cfg.encoder.dim, cfg.v2.decoder, grid)
        if cfg.encoder.init == "released":
            init_decoder(self.decoder, cfg.modality)
        self.teacher = EMATeacher(self.student, cfg.ema)

    @torch.no_grad()
    def ema_step(self) -> float:
        """Move the teacher towards the student; call once after every optimizer step."""
        return self.teacher.step(self.student)

    def make_mask(self, batch: int, length: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """The recipe's 2.0 mask for `batch` rows (samples x clones) of `length` positions: bool [batch, length]."""
        v = self.cfg.v2
        if v.mask_kind == "block_1d":
            return block_mask_1d(batch, length, prob=v.mask_prob, block=v.mask_length, adjust=v.mask_prob_adjust,
                                 generator=generator, device=device)
        if v.mask_kind == "inverse_block_2d":
            return inverse_block_mask_2d(batch, self.student.grid, prob=v.mask_prob, block=v.mask_length,
                                         adjust=v.mask_prob_adjust, generator=generator, device=device)
        if v.mask_kind == "random":
            return random_mask(batch, length, prob=v.mask_prob, generator=generator, device=device)
        raise ValueError(f"unknown v2 mask_kind {v.mask_kind!r}")

    @torch.no_grad()
    def targets(self, source: Tensor, features: Tensor, padding_mask: Tensor | None,
                frame_pm: Tensor | None) -> Tensor:
        """The teacher's targets for the unmasked samples, one pass per sample: [B, T, D] fp32 (no CLS)."""
        if self.cfg.ema.teacher_input == "student_features":
            out = self.teacher.model.forward_features(features.detach(), None, frame_pm)
        else:
            out = self.teacher.model(source, None, padding_mask)
        layers = target_layers(out, self.cfg.targets)
        if self.student.has_cls:
            layers = [t[:, 1:] for t in layers]
        return build_targets(layers, self.cfg.targets, frame_pm)

    def forward(self, source: Tensor, padding_mask: Tensor | None = None, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Data2VecOutput:
        """source: speech [B, N] float / images [B, C, H, W] / tokens [B, T] long; padding_mask: bool
        (speech [B, N] samples, text [B, T]); mask: bool [B * M, T] (clone m of sample b is row b * M + m;
        [B, T] is accepted when M = 1), True = masked, the same count in every row; drawn if None.

        Returns Data2VecOutput: pred / target [N, D] at the N masked, non-padded positions of all clones,
        mask bool [B * M, T]."""
        v, M = self.cfg.v2, self.cfg.v2.clone_batch
        features, frame_pm = self.student.embed(source, padding_mask)  # front end once per sample
        B, T = features.shape[:2]
        if mask is None:
            mask = self.make_mask(B * M, T, generator, features.device)
        check_mask(mask, (B * M, T))
        keep_indices(mask)  # checks equal visible counts with a clear message

        x = features.repeat_interleave(M, 0)
        pm = None if frame_pm is None else frame_pm.repeat_interleave(M, 0)
        out = self.student.forward_features(x, mask, pm)
        h = out.last_hidden_state
        cls = h[:, 0] if self.student.has_cls else None
        visible = h[:, 1:] if self.student.has_cls else h
        pred_full = self.decoder(visible, mask, v.mask_noise_std, generator)  # [B M, T, D]

        y = self.targets(source, features, padding_mask, frame_pm)  # [B, T, D], one teacher pass per sample
        loss_mask = mask if pm is None else mask & ~pm
        pred = pred_full[loss_mask]
        target = y.repeat_interleave(M, 0)[loss_mask]
        loss = regression_loss(pred, target, self.cfg.loss)
        if v.cls_loss > 0 and cls is not None:
            scale = self.cfg.loss.scale if self.cfg.loss.scale is not None else cls.shape[-1] ** -0.5
            y_cls = repeat(reduce(y, "b t d -> b d", "mean"), "b d -> (b m) d", m=M)
            loss = loss + v.cls_loss * ((cls.float() - y_cls) ** 2).sum() * scale
        return Data2VecOutput(loss=loss, pred=pred, target=target, mask=loss_mask, target_var=feature_std(target),
                              pred_var=feature_std(pred.detach()), ema_decay=self.teacher.decay,
                              num_masked=int(target.shape[0]))

    def encoder_params(self) -> int:
        return self.student.num_params()


def build_model(cfg: Data2VecConfig) -> nn.Module:
    """Data2Vec for a 1.0 config, Data2Vec2 for a 2.0 one (cfg.version)."""
    return Data2Vec2(cfg) if getattr(cfg, "version", 1) == 2 else Data2Vec(cfg)
