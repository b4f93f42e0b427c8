"""Looking at units: feature pages (top-activating contexts and output tokens) and process-level
activation frequency along the chain of thought (IPG paper, appendix B.3.2).

Everything reads activations through :func:`ipgkit.rollouts.iter_activations`, the teacher-forced
pass that scoring uses, so any steering active on the model applies here too.

Example:
    >>> pages = feature_pages(policy, result.top(5), rollouts)            # doctest: +SKIP
    >>> print(pages.page(pages.units[0]))                                 # doctest: +SKIP
    >>> sets = {"IPG": result.top(20), "random": random.top(20)}          # doctest: +SKIP
    >>> frame = activation_by_progress(policy, sets, rollouts)           # doctest: +SKIP
"""

from ipgkit.stats import random_dice

from .feature_pages import FeaturePages, feature_pages, output_tokens, top_activations
from .overlap import dice
from .process import activation_by_progress, plot_activation_by_progress, step_of_tokens

__all__ = [
    "FeaturePages",
    "activation_by_progress",
    "dice",
    "feature_pages",
    "output_tokens",
    "plot_activation_by_progress",
    "random_dice",
    "step_of_tokens",
    "top_activations",
]
