"""Evaluation of a frozen encoder: feature extraction and kNN (more protocols build on these)."""
from selfsup.evaluate.features import extract_features, pixel_features  # noqa: F401
from selfsup.evaluate.knn import knn_accuracy, knn_predict  # noqa: F401
