"""d2v_mini.viz.training: run curves, probe bars, predictions against targets (about 2 s on CPU)."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from d2v_mini.config import override  # noqa: E402
from d2v_mini.data2vec import Data2Vec  # noqa: E402
from d2v_mini.presets import preset  # noqa: E402
from d2v_mini.viz.masks import masked_image  # noqa: E402
from d2v_mini.viz.training import (  # noqa: E402
    format_recipes, load_history, pca_maps, per_row, plot_curves, plot_pca_maps, plot_probe, plot_sequence_cosine,
    plot_waveform, position_cosine, position_r2, predict, recipe_summary, shuffled_cosine,
)

LINES = [dict(step=10 * (i + 1), loss=1.0 / (i + 1), target_var=0.9 - 0.1 * i, pred_var=0.1 * i,
              ema_decay=0.99 + 0.001 * i, lr=1e-3, grad_norm=1.0, seconds=float(i)) for i in range(5)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _write_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LINES))
    return path


def test_plot_curves_reads_metrics_jsonl_one_line_per_metric(tmp_path):
    path = _write_metrics(tmp_path)
    axes = plot_curves(path)
    assert len(axes) == 3  # loss | target_var + pred_var | tau
    drawn = {line.get_label(): line for a in axes for line in a.get_lines()}
    assert sorted(drawn) == sorted(["loss", "target_var (teacher)", "pred_var (student)", "tau (EMA decay)"])
    for key, label in [("loss", "loss"), ("target_var", "target_var (teacher)"), ("pred_var", "pred_var (student)"),
                       ("ema_decay", "tau (EMA decay)")]:
        x, y = drawn[label].get_data()
        assert list(x) == [10, 20, 30, 40, 50]  # one point per metrics line, at its step
        np.testing.assert_allclose(y, [r[key] for r in LINES])
    assert [len(a.get_lines()) for a in axes] == [1, 2, 1]


def test_plot_curves_accepts_folder_list_and_given_axes(tmp_path):
    _write_metrics(tmp_path)
    assert len(load_history(tmp_path)) == 5 and load_history(LINES) == LINES
    _, ax = plt.subplots(1, 2)
    axes = plot_curves(LINES, ax=ax, panels=[("lr",), ("grad_norm",)])
    assert axes[0] is ax[0] and len(axes[1].get_lines()[0].get_xdata()) == 5
    with pytest.raises(ValueError, match="2 Axes for 3 panels"):
        plot_curves(LINES, ax=ax)


def test_plot_curves_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="'pred_var' is in no history line"):
        plot_curves([dict(step=1, loss=1.0, target_var=1.0, ema_decay=0.9)])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_curves(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        plot_curves([])


def test_plot_probe_bars_are_the_accuracies():
    ax = plot_probe({"data2vec": dict(accuracy=0.8), "random init": 0.55}, chance=0.1)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.8, 0.55])
    assert {t.get_text() for t in ax.texts} == {"0.800", "0.550"}
    assert any(np.allclose(line.get_ydata(), 0.1) for line in ax.get_lines())  # the chance line
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_probe({"percent by mistake": 80.0})


def test_position_cosine_and_shuffled_baseline():
    target = torch.eye(6, 8)  # 6 orthonormal targets
    assert torch.allclose(position_cosine(target, target), torch.ones(6))
    assert torch.allclose(position_cosine(-2 * target, target), -torch.ones(6))
    # a perfect prediction scores 1 with its own target and 0 with any other (never paired with itself)
    assert torch.allclose(shuffled_cosine(target, target, seed=3), torch.zeros(6))
    # a constant prediction cannot tell positions apart: own and shuffled cosines have the same mean
    const = torch.ones(6, 8)
    assert position_cosine(const, target).mean() == pytest.approx(shuffled_cosine(const, target).mean().item())
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        position_cosine(target, target[:3])


def test_per_row_puts_values_back_in_row_major_order():
    mask = torch.tensor([[True, False, True], [False, True, False]])
    grid = per_row(torch.tensor([1.0, 2.0, 3.0]), mask)
    assert grid[0, 0] == 1 and grid[0, 2] == 2 and grid[1, 1] == 3
    assert torch.isnan(grid[~mask]).all()
    with pytest.raises(ValueError, match="2 values for a mask with 3"):
        per_row(torch.tensor([1.0, 2.0]), mask)
    with pytest.raises(TypeError, match="bool"):
        per_row(torch.tensor([1.0, 2.0, 3.0]), mask.long())


def test_pca_maps_colour_masked_patches_by_the_target_components():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, [0, 3]] = True
    mask[1, [1, 2]] = True
    direction = torch.randn(16, generator=g)
    target = torch.tensor([-2.0, 2.0, -1.0, 1.0])[:, None] * direction  # [4, 16]: one direction of variation
    pred_map, target_map = pca_maps(target, target, mask, (2, 2), row=0, components=1)
    assert np.array_equal(pred_map, target_map, equal_nan=True)  # a perfect student draws the same map
    assert np.isnan(target_map[0, 1, 0]) and np.isnan(target_map[1, 0, 0])  # visible patches: no colour
    # the extremes of the component land on 0 and 1 (the sign of a principal component is arbitrary)
    assert sorted([target_map[0, 0, 0], target_map[1, 1, 0]]) == pytest.approx([0.0, 1.0])
    bad_map, _ = pca_maps(torch.zeros_like(target), target, mask, (2, 2), components=1)
    assert bad_map[0, 0, 0] == pytest.approx(0.5) and bad_map[1, 1, 0] == pytest.approx(0.5)  # the mean


def test_predict_on_a_tiny_model_is_seeded_and_plots():
    cfg = override(preset("image", "tiny"), **{"encoder.depth": 3})
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    x = torch.randn(2, 3, 32, 32)
    a, b = predict(model, x, seed=1), predict(model, x, seed=1)
    assert model.training  # the mode is restored
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.pred, b.pred)  # no dropout, the same seeded mask
    assert not a.pred.requires_grad and a.pred.shape == a.target.shape == (int(a.mask.sum()), cfg.encoder.dim)
    axes = plot_pca_maps(a, model.student.grid, image=x[0])
    assert len(axes) == 4
    shown, student_input = (ax.get_images()[0].get_array() for ax in axes[:2])
    assert a.mask[0].any() and not np.allclose(shown, student_input)  # the first panel is the image, unmasked
    np.testing.assert_allclose(shown, masked_image(x[0], torch.zeros(a.mask.shape[1], dtype=torch.bool),
                                                   model.student.grid))
    ax = plot_sequence_cosine(a, row=1, unit="patch")
    own = ax.get_lines()[0].get_ydata()
    expected = per_row(position_cosine(a.pred, a.target), a.mask)[1].numpy()
    np.testing.assert_allclose(own, expected, rtol=1e-5)


def test_plot_waveform_is_on_the_frame_axis_with_masked_spans():
    wave = torch.sin(torch.arange(3200) / 10.0)  # 10 frames of 320 samples
    mask = torch.tensor([False, True, True, False, False, True, False, False, False, False])
    ax = plot_waveform(wave, mask, hop=320)
    x = ax.get_lines()[0].get_xdata()
    assert x[0] == pytest.approx(-0.5) and x[-1] == pytest.approx(3199 / 320 - 0.5)
    spans = [p.get_x() for p in ax.patches] if ax.patches else []
    assert len(ax.patches) == 2 and sorted(round(s, 2) for s in spans) == [0.5, 4.5]  # frames 1-2 and 5
    with pytest.raises(ValueError, match=r"one waveform \[N\]"):
        plot_waveform(wave[None], mask)


def test_recipe_summary_reads_the_numbers_from_the_config():
    base = recipe_summary(preset("speech", "base"))
    assert base["masking"] == "span: p=0.65 of frames start a span of 10"
    assert base["targets"].startswith("top K=8 of 12 layers (FFN output), instance norm each")
    assert base["teacher"].startswith("tau 0.999 -> 0.9999 over 30000 steps")
    assert base["loss"] == "L2, sum over D x 1/sqrt(D)"
    # one update is 16 batches of <= 3.8M samples (fairseq's 16 GPUs), not 16 clips: say it in samples
    assert "batch 16 x 3.8M samples = 60.8M (63.3 min)" in base["optim"]
    assert "batch 16 clips <= " in recipe_summary(preset("speech", "tiny"))["optim"]
    image = recipe_summary(preset("image", "base"))
    assert image["masking"] == "block: 120 of 196 patches, blocks >= 16" and "(constant)" in image["teacher"]
    assert image["loss"] == "Smooth L1 (beta=2), mean over elements"
    changed = recipe_summary(override(preset("text", "base"), **{"targets.top_k": 4, "loss.beta": 1.0}))
    assert changed["targets"].startswith("top K=4 of 12") and changed["loss"].startswith("Smooth L1 (beta=1)")
    table = format_recipes({"base": preset("text", "base"), "tiny": preset("text", "tiny")})
    assert "[text base]" in table and "[text tiny]" in table and "top K=3 of 4 layers" in table


def test_position_r2_separates_positional_from_content_targets():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 40, generator=g) < 0.5
    lengths = torch.randint(20, 41, (64,), generator=g)
    mask &= torch.arange(40)[None] < lengths[:, None]  # padding is never masked
    rel = (torch.arange(40)[None] / lengths[:, None].float())[mask]
    directions = torch.randn(2, 8, generator=g)
    positional = torch.stack([torch.sin(3 * rel), rel], 1) @ directions  # [N, 8]: a function of t / length
    content = torch.randn(int(mask.sum()), 8, generator=g)  # nothing to do with the position
    assert position_r2(positional, mask, lengths) > 0.95
    assert abs(position_r2(content, mask, lengths)) < 0.1
    with pytest.raises(ValueError, match="masked positions"):
        position_r2(content[:-1], mask, lengths)
