"""Sample-quality metrics: FID / KID / IS through torchmetrics on Inception or dataset-classifier
features (``fid``, ``features``), improved precision / recall and the class accuracy of conditional
samples on the same features (``precision_recall``), and sliced Wasserstein, MMD and exact likelihood for
low-dimensional data (``lowdim``)."""

from diffusion_lab.metrics.features import (FEATURE_NETWORKS, ClassifierFeatures, FeatureNetwork, InceptionFeatures,
                                            build_feature_network, dataset_key, default_cache_dir, extract_features,
                                            load_or_train_classifier, write_random_inception_weights)
from diffusion_lab.metrics.fid import IMAGE_METRICS, ImageMetrics, frechet_distance, real_features
from diffusion_lab.metrics.precision_recall import class_accuracy, knn_radii, precision_recall
from diffusion_lab.metrics.lowdim import (LOWDIM_METRICS, LowDimMetrics, exact_nll, mmd_rbf, sliced_wasserstein,
                                          wasserstein2)

__all__ = ["FEATURE_NETWORKS", "ClassifierFeatures", "FeatureNetwork", "InceptionFeatures", "build_feature_network",
           "dataset_key", "default_cache_dir", "extract_features", "load_or_train_classifier",
           "write_random_inception_weights", "IMAGE_METRICS", "ImageMetrics", "frechet_distance", "real_features",
           "LOWDIM_METRICS", "LowDimMetrics", "exact_nll", "mmd_rbf", "sliced_wasserstein", "wasserstein2",
           "class_accuracy", "knn_radii", "precision_recall"]
