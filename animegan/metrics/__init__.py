"""Image-quality metrics for generated images: FID, KID and the Inception Score.

All three are computed from Inception-v3 features (features.py) of generated
images and of real reference images (real_stats.py caches the latter). Each
metric is a function `(generated: FeatureSet, reference: FeatureSet) -> {name:
value}` registered by name, as stylegan2-ada's `metric_main` registers its
metrics, so training and `animegan eval` ask for metrics by name. The math
lives in fid.py, kid.py and inception_score.py (numpy only; importing this
package does not load TensorFlow).
"""

from __future__ import annotations

from typing import Callable, Iterable

from animegan.metrics.feature_set import FeatureSet
from animegan.metrics.fid import frechet_distance
from animegan.metrics.inception_score import inception_score as score_of_logits
from animegan.metrics.kid import kernel_inception_distance

MetricFunction = Callable[[FeatureSet, FeatureSet], "dict[str, float | None]"]
METRICS: dict[str, MetricFunction] = {}


def register_metric(function: MetricFunction) -> MetricFunction:
    METRICS[function.__name__] = function
    return function


def compute_metrics(names: Iterable[str], generated: FeatureSet, reference: FeatureSet) -> dict[str, float | None]:
    """The named metrics of `generated` against `reference`, merged into one dict."""
    names = list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(sorted(METRICS))}")
    if generated.extractor != reference.extractor:
        raise ValueError(f"features from different extractors cannot be compared: "
                         f"{generated.extractor!r} and {reference.extractor!r}")
    results: dict[str, float | None] = {}
    for name in names:
        results.update(METRICS[name](generated, reference))
    return results


@register_metric
def fid(generated: FeatureSet, reference: FeatureSet) -> dict[str, float | None]:
    return {"fid": frechet_distance(generated.statistics(), reference.statistics())}


@register_metric
def kid(generated: FeatureSet, reference: FeatureSet) -> dict[str, float | None]:
    distance = kernel_inception_distance(generated.pool, reference.pool)
    return {"kid": distance.mean, "kid_std": distance.std}


@register_metric
def inception_score(generated: FeatureSet, reference: FeatureSet) -> dict[str, float | None]:
    # Only the generated images' class predictions matter; without the classifier there is no score.
    if generated.logits is None:
        return {"inception_score": None, "inception_score_std": None}
    score = score_of_logits(generated.logits)
    return {"inception_score": score.mean, "inception_score_std": score.std}
