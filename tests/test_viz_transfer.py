"""d2v_mini.viz.transfer: the learning benchmark's bars are its means, its error bars its standard errors."""
import json
import math
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from d2v_mini.demo import DemoSpec  # noqa: E402
from d2v_mini.viz.transfer import benchmark_path, format_transfer, load_benchmark, plot_transfer  # noqa: E402

VIEWS = ("fsdd_digits", "fsdd_speakers")
ROW = {"modality": "speech",
       "raw": {"fsdd_digits": 0.90, "fsdd_speakers": 0.80},
       "random_init": [{"fsdd_digits": 0.30, "fsdd_speakers": 0.50},
                       {"fsdd_digits": 0.34, "fsdd_speakers": 0.52},
                       {"fsdd_digits": 0.29, "fsdd_speakers": 0.57}],
       "pretrained": {"1.0": [{"seed": s, "probe": {"fsdd_digits": a, "fsdd_speakers": b}, "final_loss": 0.2}
                              for s, (a, b) in enumerate([(0.45, 0.60), (0.50, 0.66), (0.41, 0.61)])],
                      "2.0": [{"seed": s, "probe": {"fsdd_digits": a, "fsdd_speakers": b}, "final_loss": 0.1}
                              for s, (a, b) in enumerate([(0.40, 0.70), (0.52, 0.64)])]}}


def _se(xs):
    return statistics.stdev(xs) / math.sqrt(len(xs))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _containers(ax):
    return {c.get_label(): c for c in ax.containers if hasattr(c, "patches")}


def test_bars_are_means_and_error_bars_are_standard_errors():
    ax = plot_transfer(ROW)
    bars = _containers(ax)
    assert list(bars) == ["raw input", "random init", "pretrained x1", "pretrained x2"]
    expected = {"raw input": [[ROW["raw"][v]] for v in VIEWS],
                "random init": [[r[v] for r in ROW["random_init"]] for v in VIEWS],
                "pretrained x1": [[r["probe"][v] for r in ROW["pretrained"]["1.0"]] for v in VIEWS],
                "pretrained x2": [[r["probe"][v] for r in ROW["pretrained"]["2.0"]] for v in VIEWS]}
    for label, per_view in expected.items():
        heights = [p.get_height() for p in bars[label].patches]
        np.testing.assert_allclose(heights, [statistics.fmean(xs) for xs in per_view], err_msg=label)
        segments = bars[label].errorbar.lines[2][0].get_segments()  # one vertical segment per view
        half = [(s[1][1] - s[0][1]) / 2 for s in segments]
        ses = [_se(xs) if len(xs) > 1 else 0.0 for xs in per_view]
        np.testing.assert_allclose(half, ses, atol=1e-12, err_msg=label)
        centres = [(s[1][1] + s[0][1]) / 2 for s in segments]
        np.testing.assert_allclose(centres, heights, err_msg=label)
    # the groups are the views, the series side by side within a group
    xs = [p.get_x() + p.get_width() / 2 for p in bars["random init"].patches]
    assert xs[0] < 0.5 < xs[1] and [t.get_text() for t in ax.get_xticklabels()] == ["fsdd digits", "fsdd speakers"]


def test_this_run_dots_and_chance_lines():
    this = {"fsdd_digits": 0.47, "fsdd_speakers": 0.63}
    ax = plot_transfer(ROW, this_run=this, chance={"fsdd_digits": 0.1, "fsdd_speakers": 1 / 6})
    dots = [ln for ln in ax.get_lines() if ln.get_label() == "this run"]
    assert len(dots) == 1 and list(dots[0].get_ydata()) == [0.47, 0.63]
    right_of_bars = max(p.get_x() + p.get_width() for c in _containers(ax).values() for p in c.patches[:1])
    assert dots[0].get_xdata()[0] > right_of_bars  # a slot of its own, not on top of a bar
    labels = ax.get_legend_handles_labels()[1]
    assert "chance" in labels and "this run" in labels
    ax = plot_transfer(ROW, this_run={"fsdd_digits": 0.5, "other_view": 0.9})  # an older benchmark file
    dots = [ln for ln in ax.get_lines() if ln.get_label() == "this run"]
    assert list(dots[0].get_ydata()) == [0.5]
    with pytest.raises(ValueError, match="none in common"):
        plot_transfer(ROW, this_run={"other_view": 0.5})


def test_a_run_alone_without_pretrained_seeds():
    row = {"modality": "speech", "raw": ROW["raw"], "random_init": ROW["random_init"], "pretrained": {}}
    ax = plot_transfer(row, this_run={"fsdd_digits": 0.4, "fsdd_speakers": 0.6})
    assert list(_containers(ax)) == ["raw input", "random init"]


def test_load_benchmark(tmp_path, capsys):
    assert load_benchmark(tmp_path / "missing.json") is None
    assert "no learning benchmark results" in capsys.readouterr().out
    path = tmp_path / "learning.json"
    path.write_text(json.dumps({"rows": [ROW]}))
    assert load_benchmark(path)["rows"][0]["modality"] == "speech"
    assert load_benchmark(path, modality="speech") == ROW
    assert load_benchmark(path, modality="text") is None
    assert "no text row" in capsys.readouterr().out
    spec = DemoSpec("speech", steps=200, probe_train=1500, probe_test=300, layer="mean")
    path.write_text(json.dumps({"rows": [{**ROW, "spec": vars(spec), "overrides": {}}]}))
    assert load_benchmark(path, modality="speech", spec=spec) is not None
    assert "note" not in capsys.readouterr().out
    load_benchmark(path, modality="speech", spec=DemoSpec("speech", 400, 1500, 300, "mean"))
    assert "rerun benchmarks/bench_learning.py" in capsys.readouterr().out
    path.write_text(json.dumps([ROW]))
    with pytest.raises(ValueError, match="bench_learning"):
        load_benchmark(path)
    assert benchmark_path().parts[-3:] == ("benchmarks", "results", "learning.json")


def test_format_transfer_margins_in_standard_errors():
    this = {"fsdd_digits": 0.47, "fsdd_speakers": 0.50}
    text = format_transfer(this, ROW["random_init"], ROW["raw"])
    lines = text.splitlines()
    assert len(lines) == 3 and lines[1].startswith("fsdd_digits")
    rnd = [r["fsdd_digits"] for r in ROW["random_init"]]
    z = (0.47 - statistics.fmean(rnd)) / _se(rnd)
    assert lines[1].split()[-1] == f"{z:+.1f}" and "0.900" in lines[1]
    assert float(lines[2].split()[-1]) < 0  # speakers: worse than the random inits' mean


def test_probe_suite_extracts_features_on_the_given_device(monkeypatch):
    """The notebooks' GPU profiles score on their GPU: ProbeSuite.score passes `device` to the extraction."""
    import torch

    from d2v_mini import transfer

    seen = []

    def fake_extract(encoder, split, collate_fn, *, layer, device="cpu"):
        seen.append(device)
        g = torch.Generator().manual_seed(len(seen))
        return torch.randn(len(split), 4, generator=g), torch.tensor([item["label"] for item in split])

    monkeypatch.setattr(transfer, "extract_features", fake_extract)
    items = [dict(source=torch.zeros(3), label=k % 2, speaker=k % 3) for k in range(40)]
    task = type("Task", (), dict(train=items, test=items[:10], collate_fn=None, num_classes=3))()
    suite = object.__new__(transfer.ProbeSuite)
    suite.spec = DemoSpec("speech", steps=1, probe_train=40, probe_test=10, layer="mean")
    suite.tasks = {"fsdd_digits": task}
    suite.labels = {v: tuple(torch.tensor([it[key] for it in split]) for split in (task.train, task.test))
                    for v, key in (("fsdd_digits", "label"), ("fsdd_speakers", "speaker"))}
    scores = suite.score(torch.nn.Identity(), device="meta")
    assert seen == ["meta", "meta"] and set(scores) == {"fsdd_digits", "fsdd_speakers"}
    suite.score(torch.nn.Identity())
    assert seen[2:] == ["cpu", "cpu"]
