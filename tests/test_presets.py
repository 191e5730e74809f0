"""Presets carry the recipe numbers and the released encoders' sizes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from d2v_mini.config import Data2VecConfig
from d2v_mini.encoder import build_encoder
from d2v_mini.presets import PRESETS, RELEASED_CHECKPOINTS, RELEASED_PARAMS, format_table, preset, preset_rows


@pytest.mark.parametrize("key", sorted(RELEASED_PARAMS))
def test_base_and_large_have_the_released_sizes(key):
    modality, name = key
    with torch.device("meta"):
        n = build_encoder(preset(modality, name)).num_params()
    assert abs(n - RELEASED_PARAMS[key]) / RELEASED_PARAMS[key] < 0.02, f"{key}: {n / 1e6:.2f}M"


def test_released_claims_name_only_released_checkpoints():
    """data2vec 1.0 released speech and image base / large and text base only: text large is not released."""
    from d2v_mini.hf import RELEASED
    assert set(RELEASED_CHECKPOINTS) == set(RELEASED_PARAMS)
    for (modality, _), hub in RELEASED_CHECKPOINTS.items():
        assert hub in RELEASED[modality]
    assert ("text", "large") not in RELEASED_CHECKPOINTS and RELEASED["text"] == ("facebook/data2vec-text-base",)
    rows = preset_rows()
    released = {(r["modality"], r["preset"]): r["released"] for r in rows}
    assert released[("text", "large")] == "not released" and released[("text", "base")] == "facebook/data2vec-text-base"
    assert released[("speech", "tiny")] == released[("image", "base_paper")] == "-"
    assert "text large: no data2vec 1.0 text-large was released" in format_table(rows)
    with torch.device("meta"):  # RoBERTa-large's shape
        assert build_encoder(preset("text", "large")).num_params() / 1e6 == pytest.approx(354.3, abs=0.1)


def test_recipe_numbers():
    s, i, t = preset("speech", "base"), preset("image", "base"), preset("text", "base")
    assert (s.masking.prob, s.masking.length, s.targets.top_k, s.targets.layer_norm) == (0.65, 10, 8, "instance")
    assert (s.ema.decay_start, s.ema.decay_end, s.ema.anneal_steps) == (0.999, 0.9999, 30_000)
    assert s.loss.beta == 0 and s.loss.scale is None and s.optim.lr == 5e-4 and s.optim.betas == (0.9, 0.98)
    assert s.encoder.conv_pos_layers == 5 and s.encoder.conv_pos_kernel == 19 and s.encoder.conv_pos_groups == 16
    assert (i.masking.num_patches, i.masking.min_block, i.targets.top_k) == (120, 16, 6)
    assert (i.targets.site, i.targets.final_norm, i.loss.beta, i.ema.decay_end) == ("end", "layer", 2.0, 0.9998)
    assert i.ema.shared == () and i.optim.lr == 2e-3 and i.encoder.drop_path == 0.25
    assert (t.targets.top_k, t.targets.layer_norm, t.loss.beta, t.loss.scale, t.loss.head_layers) == \
        (10, "layer", 4.0, 1.0, 2)
    assert (t.masking.prob, t.masking.length, t.ema.anneal_steps) == (0.35, 4, 300_000)
    paper = preset("text", "base_paper")
    assert (paper.masking.prob, paper.masking.random_token_prob, paper.ema.anneal_steps) == (0.15, 0.1, 100_000)


def test_every_preset_round_trips_through_a_dict():
    for modality, names in PRESETS.items():
        for name in names:
            cfg = preset(modality, name)
            again = Data2VecConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
            assert again == cfg, (modality, name)


def test_json_lists_override_tuple_fields_as_a_checkpoint_reloads_them():
    """override(cfg, **{"ema.shared": []}) (a JSON or CLI list) stores the tuple a saved config reloads as,
    so resuming the run does not report a changed config."""
    from d2v_mini.config import override
    cfg = override(preset("speech", "tiny_v2"), **{"ema.shared": ["front_end"],
                                                   "encoder.conv_layers": [[32, 10, 5], [32, 3, 2]]})
    assert cfg.ema.shared == ("front_end",) and cfg.encoder.conv_layers == ((32, 10, 5), (32, 3, 2))
    assert Data2VecConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_preset_is_explained():
    with pytest.raises(ValueError, match="expected one of"):
        preset("image", "huge")


def test_cli_presets_table_and_json():
    run = lambda *a: subprocess.run([sys.executable, "-m", "d2v_mini", "presets", *a],  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout
    rows = json.loads(run("--json"))
    assert {(r["modality"], r["preset"]) for r in rows} >= set(RELEASED_PARAMS)
    for r in rows:
        assert set(r) >= {"modality", "preset", "layers", "dim", "heads", "encoder_params"}
    base = next(r for r in rows if (r["modality"], r["preset"]) == ("speech", "base"))
    assert (base["layers"], base["dim"], base["heads"]) == (12, 768, 12)
    assert "93.2M" in run() and "0.999->0.9999" in run()


def test_fit_schedules_ends_the_recipe_schedules_with_the_run():
    from d2v_mini.config import fit_schedules
    from d2v_mini.ema import ema_decay
    from d2v_mini.errors import ConfigError

    tiny = preset("speech", "tiny")  # schedules over 300 steps: a 120-step run stopped part-way (tau 0.9936)
    assert ema_decay(120, tiny.ema) < tiny.ema.decay_end
    cfg = fit_schedules(tiny, 120)
    assert ema_decay(120, cfg.ema) == tiny.ema.decay_end and cfg.optim.total_steps == 120
    assert cfg.optim.warmup_steps == 12  # capped at a tenth of the run (the preset's 20 would be a sixth)
    assert (cfg.encoder, cfg.targets, cfg.masking) == (tiny.encoder, tiny.targets, tiny.masking)
    vision = fit_schedules(preset("image", "base"), 50)  # a constant tau (anneal_steps 0) stays constant
    assert vision.ema.anneal_steps == 0 and ema_decay(0, vision.ema) == 0.9998
    with pytest.raises(ConfigError, match="positive integer"):
        fit_schedules(tiny, 0)
