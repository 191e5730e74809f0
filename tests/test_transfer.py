"""Raw-input baselines and the transfer margin: what the learning benchmark compares against."""
import math

import torch

from d2v_mini.baselines import bag_of_tokens, log_mel_stats
from d2v_mini.transfer import margin, mean_se


def test_log_mel_stats_see_where_the_energy_is_and_ignore_padding():
    t = torch.arange(16_000) / 16_000
    low, high = torch.sin(2 * math.pi * 200 * t), torch.sin(2 * math.pi * 4000 * t)
    feats = log_mel_stats(torch.stack([low, high]))  # [2, 80]: 40 means, then 40 stds
    means = feats[:, :40]
    assert means[0].argmax() < 10 < means[1].argmax()  # a 200 Hz tone lights the low bands, 4 kHz the high ones
    # padding does not count: a clip padded with zeros has the statistics of the clip alone
    padded = torch.cat([low[:8000], torch.zeros(8000)])[None]
    pm = torch.zeros(1, 16_000, dtype=torch.bool)
    pm[:, 8000:] = True
    alone = log_mel_stats(low[None, :8000])
    assert torch.allclose(log_mel_stats(padded, pm)[:, :40], alone[:, :40], atol=0.2)
    assert not torch.allclose(log_mel_stats(padded)[:, :40], alone[:, :40], atol=0.2)


def test_bag_of_tokens_counts_words_not_specials():
    x = torch.tensor([[0, 7, 7, 9, 2, 1, 1]])  # <s> 7 7 9 </s> <pad> <pad>
    bag = bag_of_tokens(x, vocab_size=12)
    assert torch.allclose(bag[0, 7], torch.log1p(torch.tensor(2.0)))
    assert torch.allclose(bag[0, 9], torch.log1p(torch.tensor(1.0)))
    assert bag[0, [0, 1, 2]].sum() == 0 and bag.sum() > 0


def test_margin_in_standard_errors():
    m = margin([0.6, 0.62, 0.64], [0.5, 0.5, 0.5])
    assert math.isclose(m["margin"], 0.12, abs_tol=1e-9)
    assert math.isclose(m["se"], mean_se([0.6, 0.62, 0.64])[1])  # the random inits agree: only the seeds' spread
    assert m["z"] > 10
