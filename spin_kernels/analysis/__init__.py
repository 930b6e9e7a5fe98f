"""The qualitative study (issue 7): which layers compute alike, and the cost/accuracy family of shared models.

* :func:`linear_cka`, :func:`hsic_unbiased`, :class:`MinibatchCKA`, :func:`layer_similarity` — representation
  similarity between layers (streaming minibatch CKA, Nguyen et al. 2021).
* :func:`weight_similarity`, :func:`fusion_drift` — weight-space similarity and the drift of fusion-trained layers.
* :func:`suggest_sharing_plan`, :func:`top_similar_spans` — sharing-plan candidates from a similarity matrix.
* :func:`family_table`, :func:`pareto_front` — the model family table and its Pareto fronts.
"""
from .cka import MinibatchCKA, gram_linear, hsic_unbiased, layer_similarity, linear_cka
from .family import family_table
from .pareto import pareto_front
from .plans import format_mapping, suggest_sharing_plan, top_similar_spans
from .weights import fusion_drift, per_layer_tensors, weight_similarity

__all__ = ["linear_cka", "hsic_unbiased", "gram_linear", "MinibatchCKA", "layer_similarity", "weight_similarity",
           "fusion_drift", "per_layer_tensors", "suggest_sharing_plan", "top_similar_spans", "format_mapping",
           "family_table", "pareto_front"]
