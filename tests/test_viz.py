"""The notebooks' plotting / analysis helpers (d2v_mini.viz.{diagram,masks,targets}) and the cost
model (d2v_mini.scaling) compute what they claim. Runtime: ~3 s on 2 CPU cores."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from dataclasses import replace  # noqa: E402

from einops import rearrange  # noqa: E402

from d2v_mini.config import EMAConfig  # noqa: E402
from d2v_mini.masking import block_mask, span_mask, text_mask  # noqa: E402
from d2v_mini.presets import preset  # noqa: E402
from d2v_mini.scaling import (activation_bytes_per_sample, block_macs, flops_per_sample, input_tokens,  # noqa: E402
                              max_micro_batch, memory_estimate, paper_batch, plan_batch)
from d2v_mini.targets import instance_norm  # noqa: E402
from d2v_mini.viz.diagram import draw_overview  # noqa: E402
from d2v_mini.viz.masks import (GREY, format_tokens, mask_runs, masked_image, patch_grid,  # noqa: E402
                                label_tokens, plot_ratio_hist, plot_spectrogram_mask, plot_tokens, sample_ratios,
                                token_kinds)
from d2v_mini.viz.targets import (channel_time_means, cosine_matrix, layer_stats, nearest, pca,  # noqa: E402
                                  pca_rgb, plot_ema_schedule, same_label_chance, same_label_neighbour_rate,
                                  explained_by)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------ targets
def test_pca_rgb_is_an_rgb_map_of_the_grid_that_separates_different_patches():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, generator=g), torch.randn(32, generator=g)
    x = torch.stack([a if j < 3 else b for i in range(4) for j in range(6)])  # 4 x 6 grid, left 3 columns = a
    x = x + 0.01 * torch.randn(x.shape, generator=g)
    rgb = pca_rgb(x, grid=(4, 6))
    assert rgb.shape == (4, 6, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.allclose(rgb.reshape(-1, 3).min(0), 0.0) and np.allclose(rgb.reshape(-1, 3).max(0), 1.0)
    left, right = rgb[:, :3].reshape(-1, 3), rgb[:, 3:].reshape(-1, 3)
    within = max(np.ptp(left[:, 0]), np.ptp(right[:, 0]))
    between = abs(left[:, 0].mean() - right[:, 0].mean())  # the first component is the a/b split
    assert between > 0.9 and within < 0.1
    with pytest.raises(ValueError, match="4x6 grid"):
        pca_rgb(x[:20], grid=(4, 6))
    both = pca_rgb(torch.stack([x, x[torch.randperm(24, generator=g)]]), grid=(4, 6))  # one PCA for a batch
    assert both.shape == (2, 4, 6, 3) and both.min() >= 0.0 and both.max() <= 1.0
    assert np.allclose(np.sort(both[0].reshape(-1, 3), 0), np.sort(both[1].reshape(-1, 3), 0), atol=1e-5)


def test_pca_orders_components_by_variance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g) * torch.tensor([5.0, 1.0, 0.2])
    p = pca(x, 3)
    var = p.var(0)
    assert var[0] > var[1] > var[2]
    assert torch.allclose(p.mean(0), torch.zeros(3), atol=1e-4)


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_sees_directions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 16, generator=g)
    x[3] = 7.0 * x[1]  # same direction, other scale
    x[4] = -x[2]
    sim = cosine_matrix(x)
    assert sim.shape == (10, 10)
    assert torch.allclose(sim, sim.T, atol=1e-6)
    assert torch.allclose(torch.diagonal(sim), torch.ones(10), atol=1e-6)
    assert sim[1, 3] == pytest.approx(1.0, abs=1e-6) and sim[2, 4] == pytest.approx(-1.0, abs=1e-6)
    idx, cos = nearest(x, k=2)
    assert idx[1, 0] == 3 and idx[3, 0] == 1 and cos[1, 0] == pytest.approx(1.0, abs=1e-6)
    assert not (idx == torch.arange(10)[:, None]).any()  # a position is never its own neighbour


def test_explained_by_is_the_variance_share_of_group_means():
    g = torch.Generator().manual_seed(0)
    positions = torch.arange(8).repeat(40)
    table = torch.randn(8, 6, generator=g)[positions]  # targets that are a function of position: all explained
    assert explained_by(table, positions) == pytest.approx(1.0)
    noise = torch.randn(320, 6, generator=g)
    mixed = explained_by(table + noise, positions)  # equal parts table and noise: about half
    assert 0.35 < mixed < 0.65
    assert explained_by(noise, torch.randint(0, 4, (320,), generator=g)) < 0.05  # unrelated labels: ~ (G-1)/N
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        explained_by(noise, positions[:10])


def test_same_label_neighbour_rate_tells_identity_from_context():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3, 20), generator=g)
    emb = torch.randn(5, 32, generator=g)
    identity = emb[labels] + 0.01 * torch.randn(3, 20, 32, generator=g)  # features = the label's embedding
    assert same_label_neighbour_rate(identity, labels) == 1.0
    unrelated = torch.randn(3, 20, 32, generator=g)  # features that ignore the label
    assert same_label_neighbour_rate(unrelated, labels) < 0.5
    valid = torch.zeros(3, 20, dtype=torch.bool)
    valid[:, :1] = True  # one position per row: nothing to compare
    assert np.isnan(same_label_neighbour_rate(identity, labels, valid))


def test_same_label_chance_is_the_rate_of_features_that_ignore_the_label():
    labels = torch.tensor([[0, 0, 1, 1, 2]])  # four counted positions, each with 1 same-label partner among 4 others
    assert same_label_chance(labels) == pytest.approx(0.25)
    valid = torch.tensor([[True, True, True, False, True]])  # label 1 now occurs once: only the two 0s count
    assert same_label_chance(labels, valid) == pytest.approx(1 / 3)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200, 30), generator=g)
    unrelated = torch.randn(200, 30, 16, generator=g)  # nearest neighbours at random with respect to the label
    assert abs(same_label_neighbour_rate(unrelated, labels) - same_label_chance(labels)) < 0.02
    assert np.isnan(same_label_chance(torch.tensor([[0, 1, 2]])))


def test_layer_stats_measure_scale_and_instance_norm_removes_channel_means():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 50, 8, generator=g) + torch.linspace(-3, 3, 8)  # channels with different offsets
    layers = [base, 10 * base]
    rows = layer_stats(layers)
    assert rows[1]["rms"] == pytest.approx(10 * rows[0]["rms"], rel=1e-5)
    assert rows[0]["channel_mean"] > 1.0
    assert rows[0]["channel_std_min"] <= rows[0]["channel_std"] <= rows[0]["channel_std_max"]
    normed = layer_stats([instance_norm(base)])[0]
    assert normed["channel_mean"] < 1e-5 and normed["channel_std"] == pytest.approx(1.0, abs=0.02)


def test_channel_time_means_ignore_padding():
    x = torch.ones(1, 4, 2)
    x[0, 3] = 100.0  # a padded frame
    pm = torch.tensor([[False, False, False, True]])
    assert torch.allclose(channel_time_means(x, pm), torch.ones(1, 2))
    assert channel_time_means(x)[0, 0] > 1.0


def test_ema_schedule_plot_follows_the_configured_decay():
    ax = plot_ema_schedule({"a": EMAConfig(decay_start=0.99, decay_end=0.999, anneal_steps=100)}, steps=200)
    y = ax.get_lines()[0].get_ydata()
    assert y[0] == pytest.approx(0.99) and y[-1] == pytest.approx(0.999)
    assert np.all(np.diff(y) >= 0)


# -------------------------------------------------------------------------------------------- masks
def test_mask_runs_finds_the_spans():
    m = torch.tensor([True, True, False, False, True, False, True, True, True])
    assert mask_runs(m) == [(0, 2), (4, 5), (6, 9)]
    assert mask_runs(torch.zeros(5, dtype=torch.bool)) == []
    with pytest.raises(TypeError, match="bool"):
        mask_runs(m.long())


def test_masked_image_greys_exactly_the_masked_patches_in_row_major_order():
    img = torch.rand(3, 8, 12)
    img[0, 0, 0], img[0, 0, 1] = 0.0, 1.0  # so min-max scaling is the identity
    mask = torch.zeros(6, dtype=torch.bool)  # grid 2 x 3 of 4 x 4 patches
    mask[1 * 3 + 2] = True  # patch (row 1, column 2)
    out = masked_image(img, mask, grid=(2, 3))
    assert out.shape == (8, 12, 3) and out.min() >= 0 and out.max() <= 1
    assert np.allclose(out[4:, 8:], GREY)
    hwc = rearrange(img, "c h w -> h w c").numpy()
    assert np.allclose(out[:4], hwc[:4]) and np.allclose(out[4:, :8], hwc[4:, :8])
    grid = patch_grid(mask, (2, 3))
    assert grid[1, 2] and grid.sum() == 1


def test_token_kinds_follow_the_bert_rule_and_format_marks_them():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 100, (1, 400), generator=g)
    tm = text_mask(tokens, mask_idx=99, vocab_size=100, prob=0.15, random_token_prob=0.1, leave_unmasked_prob=0.1,
                   generator=g)
    kinds = token_kinds(tm.mask[0], tm.replaced[0], tokens[0], tm.tokens[0])
    k = np.array(kinds)
    assert (k == "mask").sum() == int(tm.replaced.sum())
    assert (k != "visible").sum() == int(tm.mask.sum())
    changed = (tm.tokens[0] != tokens[0]).numpy()
    assert changed[k == "random"].all() and not changed[k == "kept"].any() and not changed[k == "visible"].any()
    assert {"mask", "random", "kept"} <= set(kinds)
    text = format_tokens(["a", "b", "c", "d"], ["visible", "mask", "random", "kept"], ["a", "<mask>", "z", "d"])
    assert text == "a [b] {c->z} (d)"
    ax = plot_tokens(["a", "b", "c", "d"], ["visible", "mask", "random", "kept"])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", "d"]


def test_label_tokens_puts_one_token_under_each_index():
    _, ax = plt.subplots()
    ax.plot(range(4), [0.1, 0.2, 0.3, 0.4])
    label_tokens(ax, ["<s>", " the", " cat", "</s>"], ["visible", "mask", "visible", "visible"])
    assert list(ax.get_xticks()) == [0, 1, 2, 3]  # tick i sits at token index i: the strip lines up with the data
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<s>", "·the", "·cat", "</s>"]
    assert [t.get_bbox_patch() is not None for t in ax.get_xticklabels()] == [False, True, False, False]
    with pytest.raises(ValueError, match="3 pieces but 2 kinds"):
        label_tokens(ax, ["a", "b", "c"], ["visible", "mask"])


def test_sample_ratios_measure_the_recipes_mask_ratios():
    block = sample_ratios(lambda g: block_mask(4, (14, 14), generator=g), n=10)
    assert block.shape == (40,) and block.max() <= 120 / 196 + 1e-6 and block.mean() > 0.6
    span = sample_ratios(lambda g: span_mask((4, 500), require_same_masks=False, generator=g), n=20)
    assert abs(span.mean() - 0.49) < 0.015  # the paper's ~49% for p = 0.65, length 10
    again = sample_ratios(lambda g: span_mask((4, 500), require_same_masks=False, generator=g), n=20)
    assert np.array_equal(span, again)  # seeded
    same = sample_ratios(lambda g: span_mask((4, 500), generator=g), n=20)  # every row cut to the batch minimum
    assert same.mean() < span.mean() - 0.01
    ax = plot_ratio_hist(span, paper=0.49)
    assert len(ax.lines) == 2


def test_spectrogram_mask_plot_shades_each_span_at_frame_times():
    mask = torch.zeros(50, dtype=torch.bool)
    mask[10:20] = True
    mask[30:35] = True
    ax = plot_spectrogram_mask(torch.rand(40, 100), mask, hop_ms=10, frame_ms=20)
    spans = [p for p in ax.patches]
    assert len(spans) == 2
    x0 = sorted(round(p.get_x(), 3) for p in spans)
    assert x0 == [0.2, 0.6]  # frame 10 and 30 at 20 ms per frame


def test_overview_diagram_names_the_parts():
    fig = draw_overview(top_k=3, depth=5)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for part in ("student", "EMA teacher", "top-3", "masked", "targets", "loss"):
        assert part in texts
    with pytest.raises(ValueError, match="top_k"):
        draw_overview(top_k=6, depth=5)


# ------------------------------------------------------------------------------------------ scaling
def test_flops_match_vit_b_and_scale_with_depth_and_tokens():
    cfg = preset("image", "base")
    f = flops_per_sample(cfg)
    assert f["tokens"] == 197
    assert f["forward_flops"] / 2 == pytest.approx(17.58e9, rel=0.01)  # ViT-B/16 at 224: 17.6 GMACs
    deep = flops_per_sample(replace(cfg, encoder=replace(cfg.encoder, depth=24)))
    assert deep["blocks"] == 2 * f["blocks"]
    assert block_macs(200, 64, 256) < 2 * block_macs(100, 64, 256) * 1.5  # linear + quadratic in T
    assert block_macs(200, 64, 256) > 2 * block_macs(100, 64, 256)
    # one step: 3 x (student forward + head) + teacher forward (the whole encoder for images)
    assert f["train_flops"] == pytest.approx(4 * f["forward_flops"] + 6 * f["head"])


def test_speech_tokens_and_teacher_reuses_student_features():
    cfg = preset("speech", "base")
    assert input_tokens(cfg, 320_000) == 999  # 20 s at 50 Hz
    assert input_tokens(cfg, 16_000) == 49
    f = flops_per_sample(cfg)
    assert f["teacher_flops"] == 2 * (f["positional"] + f["blocks"])  # no CNN in the teacher pass


def test_memory_is_linear_in_batch_and_attention_matrices_cost_extra():
    cfg = preset("text", "base")
    m1, m2, m8 = (memory_estimate(cfg, b) for b in (1, 2, 8))
    assert m1["model_states"] == m8["model_states"] == 20 * m1["params"]
    assert m8["activations"] == 8 * m1["activations"]
    assert m2["total"] - m1["total"] == m1["activations"]
    eager = activation_bytes_per_sample(cfg, flash=False)["total"]
    assert eager > activation_bytes_per_sample(cfg)["total"]
    assert max_micro_batch(cfg, 80) > max_micro_batch(cfg, 40) > max_micro_batch(cfg, 16)
    assert max_micro_batch(cfg, 80, flash=False) < max_micro_batch(cfg, 80)


def test_paper_batches_are_the_recipes():
    assert paper_batch(preset("image", "base"))[0] == 2048 and paper_batch(preset("image", "large"))[0] == 4096
    assert paper_batch(preset("text", "base")) == (256, "256 blocks of 512 tokens")
    crops, note = paper_batch(preset("speech", "base"))
    assert abs(crops * 320_000 - 16 * 3_800_000) / (16 * 3_800_000) < 0.02  # 16 GPUs x 3.8M samples
    assert note.startswith("16 x 3.8M samples")  # says the update the recipe counts, as notebook 04 and README do


def test_speech_memory_estimate_agrees_with_a_reported_out_of_memory():
    # fairseq issue #4159: data2vec audio base on 16 GB T4s (fp16, eager attention) ran out of memory above
    # max_tokens ~ 960k samples per GPU, i.e. 3 crops of 20 s; the estimate should be in that range
    assert 2 <= max_micro_batch(preset("speech", "base"), 16, flash=False) <= 6


def test_plan_batch_reaches_the_global_batch():
    for global_batch, max_micro, world in ((2048, 100, 8), (256, 7, 4), (192, 1000, 16), (256, 1, 1)):
        accum, micro = plan_batch(global_batch, max_micro, world)
        assert accum * micro * world == global_batch and micro <= max_micro
        if accum > 1:  # the smallest accumulation that works
            assert all((global_batch // world) % a or (global_batch // world) // a > max_micro
                       for a in range(1, accum))
    with pytest.raises(ValueError, match="not even one sample"):
        plan_batch(256, 0, 1)
