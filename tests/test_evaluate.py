"""Evaluation: the linear probe measures what it should, features pool only real positions, and the
random-init baseline is the same encoder with other weights. About 15 s on 2 CPU cores."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset

from d2v_mini.data.text import TextCollator
from d2v_mini.encoder import build_encoder
from d2v_mini.evaluate import (extract_features, finetune, linear_probe, masked_mean, probe, random_init_encoder,
                               select_layer)
from d2v_mini.presets import preset


class Items(Dataset):
    def __init__(self, sources, labels):
        self.sources, self.labels = sources, labels

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        return dict(source=self.sources[i], label=int(self.labels[i]))


def blobs(n: int, d: int = 16, classes: int = 4, seed: int = 0):
    """Linearly separable features: class c is a tight cluster around a random centre."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + 0.3 * torch.randn(n, d, generator=g), y


def test_probe_separates_linearly_separable_features():
    xtr, ytr = blobs(400, seed=0)
    xte, yte = blobs(200, seed=0)  # same centres (same seed), fresh points would share them too
    xte = xte + 0.3 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(9))
    r = linear_probe(xtr, ytr, xte, yte, num_classes=4, weight_decay=1e-3)
    assert r["accuracy"] >= 0.99 and r["train_accuracy"] >= 0.99 and r["val_accuracy"] is None


def test_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 32, generator=g)
    y = torch.randint(0, 4, (1200,), generator=g)  # labels independent of the features
    r = linear_probe(x[:800], y[:800], x[800:], y[800:], num_classes=4)
    assert abs(r["accuracy"] - 0.25) < 0.08  # 400 test points: 3.5 standard deviations of chance
    assert r["train_accuracy"] > r["accuracy"]  # it can only memorise


def test_probe_picks_weight_decay_on_train_split_only():
    xtr, ytr = blobs(300, seed=2)
    xte, yte = blobs(100, seed=2)
    grid = (1e-3, 1e-1)
    a = linear_probe(xtr, ytr, xte, yte, num_classes=4, weight_decay=grid)
    b = linear_probe(xtr, ytr, xte, 1 - yte.clamp(max=1), num_classes=4, weight_decay=grid)  # other test labels
    assert a["weight_decay"] == b["weight_decay"] and a["val_accuracy"] == b["val_accuracy"]  # same choice
    assert a["weight_decay"] in grid and a["val_accuracy"] is not None
    assert linear_probe(xtr, ytr, xte, yte, num_classes=4, weight_decay=grid) == a  # deterministic


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])  # [B=2, T=3, D=1]
    pm = torch.tensor([[False, False, True], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, pm), torch.tensor([[2.0], [4.0]]))
    with pytest.raises(TypeError):
        masked_mean(x, pm.long())


def _short_and_long(modality: str, cfg):
    g = torch.Generator().manual_seed(0)
    if modality == "text":
        return (torch.randint(5, 2000, (9,), generator=g), torch.randint(5, 2000, (40,), generator=g),
                TextCollator(cfg.encoder.pad_idx))
    from d2v_mini.data import AudioCollator
    return torch.randn(4000, generator=g), torch.randn(12000, generator=g), AudioCollator(max_samples=16000)


@pytest.mark.parametrize("modality", ["text", "speech"])
def test_features_mean_pool_only_non_padded_positions(modality):
    """A short item batched with a long one is padded: its feature is the mean over its own positions."""
    cfg = preset(modality, "tiny")
    enc = random_init_encoder(cfg, seed=0)
    short, long, collate = _short_and_long(modality, cfg)
    feats, _ = extract_features(enc, Items([short, long], [0, 1]), collate, batch_size=2)
    batch = collate([dict(source=short), dict(source=long)])
    with torch.no_grad():
        out = enc(batch["source"], padding_mask=batch["padding_mask"])
    pm = out.padding_mask
    assert pm is not None and pm[0].any() and not pm[1].any()  # frames / tokens of the short item are padded
    h = out.last_hidden_state
    torch.testing.assert_close(feats[0], h[0][~pm[0]].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats[1], h[1].mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(h[0].mean(0), feats[0], atol=1e-3)  # the mean with the pads is another vector


def test_text_features_do_not_depend_on_the_batch():
    """Text pads are invisible (attention key mask, no positional mixing): batched = alone.
    (Not so for speech: the stacked positional convs see padded frames, as in fairseq and HF.)"""
    cfg = preset("text", "tiny")
    enc = random_init_encoder(cfg, seed=0)
    short, long, collate = _short_and_long("text", cfg)
    together, _ = extract_features(enc, Items([short, long], [0, 1]), collate, batch_size=2)
    alone, _ = extract_features(enc, Items([short], [0]), collate, batch_size=1)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_image_features_mean_pool_patches_without_cls():
    cfg = preset("image", "tiny")
    enc = random_init_encoder(cfg, seed=0)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats, labels = extract_features(enc, Items(list(x), [0, 1, 2]), None, batch_size=2)
    with torch.no_grad():
        h = enc(x).last_hidden_state
    torch.testing.assert_close(feats, h[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, torch.tensor([0, 1, 2]))
    cls, _ = extract_features(enc, Items(list(x), [0, 1, 2]), None, cls=True)
    torch.testing.assert_close(cls, h[:, 0], atol=1e-5, rtol=1e-5)


def test_select_layer():
    cfg = preset("text", "tiny")
    enc = random_init_encoder(cfg)
    with torch.no_grad():
        out = enc(torch.randint(5, 2000, (2, 12)))
    assert select_layer(out, "last") is out.last_hidden_state
    assert select_layer(out, 2) is out.hidden_states[2] and select_layer(out, -1) is out.hidden_states[-1]
    torch.testing.assert_close(select_layer(out, "mean"), torch.stack(out.hidden_states[1:]).mean(0))
    with pytest.raises(ValueError, match="out of range"):
        select_layer(out, 99)
    with pytest.raises(ValueError, match="'last', 'mean'"):
        select_layer(out, "first")


def test_random_init_encoder_same_shape_other_weights():
    cfg = preset("image", "tiny")
    state = torch.get_rng_state()
    a, b, a2 = random_init_encoder(cfg, 0), random_init_encoder(cfg, 1), random_init_encoder(cfg, 0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    sa, sb, sa2 = a.state_dict(), b.state_dict(), a2.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    assert type(a) is type(build_encoder(cfg)) and a.num_params() == build_encoder(cfg).num_params()
    assert all(torch.equal(sa[k], sa2[k]) for k in sa)  # seeded
    differ = [k for k in sa if sa[k].float().std() > 0 and not torch.equal(sa[k], sb[k])]
    assert any("blocks.0.attn.q.weight" in k for k in differ) and "patch_embed.weight" in differ


def _two_vocabularies(n: int, seed: int):
    """Token sequences whose class is the half of the vocabulary they are drawn from."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    body = torch.randint(10, 60, (n, 10), generator=g) + 50 * y[:, None]
    seqs = torch.cat([torch.zeros(n, 1, dtype=torch.long), body, torch.full((n, 1), 2)], dim=1)
    return Items(list(seqs), y.tolist())


def test_probe_and_finetune_on_a_small_task():
    cfg = preset("text", "tiny")
    task = SimpleNamespace(name="halves", train=_two_vocabularies(64, 0), test=_two_vocabularies(48, 1),
                           num_classes=2, collate_fn=TextCollator(cfg.encoder.pad_idx))
    enc = random_init_encoder(cfg)
    r = probe(enc, task, layer="mean")
    assert r["num_train"] == 64 and r["num_test"] == 48 and r["feature_dim"] == cfg.encoder.dim
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ft = finetune(enc, task, epochs=3, lr=1e-3, batch_size=16)
    assert ft["losses"][-1] < ft["losses"][0]  # it learns
    assert ft["accuracy"] >= 0.9  # on a held-out split of an easy task
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # the original is untouched
