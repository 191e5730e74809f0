"""Transfer: does a pretrained encoder beat a random one on tasks its setup was not tuned for?

A `ProbeSuite` holds the labelled data of every probe *view* of a modality, built once, and scores an
encoder on all of them with one protocol (`evaluate.extract_features` + `evaluate.linear_probe`: frozen
features of `spec.layer`, mean-pooled, logistic regression with its L2 chosen on the train split).
Views that read the same clips / images / sentences share one feature extraction:

| modality | view                | what                                                        |
|----------|---------------------|-------------------------------------------------------------|
| speech   | `fsdd_digits`       | the spoken digit (what the tiny setup was tuned on)         |
|          | `fsdd_speakers`     | who speaks: other labels of the same clips                  |
| image    | `fashion_mnist`     | the garment class (tuned on)                                |
|          | `fashion_mnist_500` | the same with only 500 labelled images (few-label regime)   |
|          | `cifar10`           | another image set (natural colour images)                   |
| text     | `subjectivity`      | subjective vs objective sentence (tuned on)                 |
|          | `sentence_polarity` | positive vs negative review sentence (another task)         |

    suite = ProbeSuite(cfg, demo.SPECS["speech"])
    suite.score(encoder)   # {"fsdd_digits": 0.52, "fsdd_speakers": 0.71}
    suite.raw()            # the raw-input baseline of each view (d2v_mini/baselines.py)
"""
from __future__ import annotations

import math
import statistics

import torch

from .baselines import raw_features
from .evaluate import extract_features, linear_probe
from .pipeline import probe_data

# view name -> (probe task, label key, train items (None = the spec's), test items (None = the spec's))
VIEWS = {
    "speech": {"fsdd_digits": ("fsdd_digits", "label", None, None),
               "fsdd_speakers": ("fsdd_digits", "speaker", None, None)},
    "image": {"fashion_mnist": ("fashion_mnist", "label", None, None),
              "fashion_mnist_500": ("fashion_mnist", "label", 500, None),
              "cifar10": ("cifar10", "label", None, None)},
    "text": {"subjectivity": ("subjectivity", "label", None, None),
             "sentence_polarity": ("sentence_polarity", "label", None, None)},
}


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0)


class ProbeSuite:
    """The labelled data of every view of one modality, built once; `score(encoder)` probes them all."""

    def __init__(self, cfg, spec, quick: bool = False):
        """cfg: the encoder's config (image size, tokenizer); spec: a demo.DemoSpec (probe sizes, layer,
        pretraining data set, which the tiny text tokenizer is trained on); quick: 300 / 100 items."""
        self.spec, self.tasks, self.labels = spec, {}, {}
        self.vocab = getattr(cfg.encoder, "vocab_size", None)
        n_train, n_test = (300, 100) if quick else (spec.probe_train, spec.probe_test)
        for view, (task, key, _, _) in VIEWS[cfg.modality].items():
            if task not in self.tasks:
                self.tasks[task] = probe_data(cfg, task, dataset=spec.dataset, limit_train=n_train, limit_test=n_test)
            t = self.tasks[task]
            self.labels[view] = tuple(torch.tensor([item[key] for item in split]) for split in (t.train, t.test))

    def _views(self, feats: dict) -> dict[str, float]:
        out = {}
        for view, (task, _, n_train, n_test) in VIEWS[self.spec.modality].items():
            (xtr, xte), (ytr, yte) = feats[task], self.labels[view]
            xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
            out[view] = linear_probe(xtr, ytr, xte, yte, num_classes=self.tasks[task].num_classes)["accuracy"]
        return out

    def score(self, encoder, device: str | torch.device = "cpu") -> dict[str, float]:
        """Linear-probe test accuracy of a frozen encoder (or a Data2Vec's student) on every view; the
        features are extracted on `device` (the encoder is moved there), the probes fit on the CPU."""
        feats = {name: tuple(extract_features(encoder, split, t.collate_fn, layer=self.spec.layer, device=device)[0]
                             for split in (t.train, t.test)) for name, t in self.tasks.items()}
        return self._views(feats)

    def raw(self) -> dict[str, float]:
        """The same probe on raw-input features (log-mel statistics / pixels / bag of tokens)."""
        feats = {name: tuple(raw_features(split, t.collate_fn, t.modality, vocab_size=self.vocab)
                             for split in (t.train, t.test)) for name, t in self.tasks.items()}
        return self._views(feats)




def margin(pretrained: list[float], random_init: list[float]) -> dict:
    """Pretrained minus random-init accuracy: mean difference, its standard error (the two groups are
    independent: sqrt(se_p^2 + se_r^2)) and the margin in standard errors ("z")."""
    (mp, sp), (mr, sr) = mean_se(pretrained), mean_se(random_init)
    se = math.sqrt(sp ** 2 + sr ** 2)
    return dict(margin=mp - mr, se=se, z=(mp - mr) / se if se > 0 else float("nan"))
