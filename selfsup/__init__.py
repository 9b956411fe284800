"""selfsup: self-supervised learning on PyTorch.

    import selfsup
    cfg = selfsup.load_config(overrides=["train.epochs=1"])
    result = selfsup.pretrain(cfg, "runs/demo")              # training alone
    selfsup.pretrain_and_evaluate(cfg, "runs/demo2")          # what `selfsup pretrain` runs: + kNN, report
    run = selfsup.load_run("runs/demo")
    feats = run.embed(images_u8)                       # (N, D), L2-normalised
    selfsup.export_encoder("runs/demo", "encoder.safetensors")
    encoder = selfsup.load_encoder("encoder.safetensors")   # a plain nn.Module, eval mode
    selfsup.write_report("runs/demo")                  # runs/demo/report.html
"""
import os

# oneDNN keeps a compiled kernel for every shape a bf16 matmul or convolution has met, up to 1,024 of them.
# Text batches change shape at every step (documents of different lengths, a different count of predicted
# tokens), and on a CPU with bf16 autocast the cache grew a 20-minute BART run to 14 GB (measured: 10.4 GB
# for 800 matmul shapes at the default capacity, 4.3 GB at 256). 256 kernels still hold every fixed shape
# of a ResNet-50 (53 convolutions, three kernels each for the forward and backward passes). Set the
# variable yourself to choose otherwise.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")

from selfsup.compat import declare_torchvision_operators_if_unloadable

declare_torchvision_operators_if_unloadable()      # before anything imports torchvision (timm, lightning)

from selfsup.augment import AugmentConfig, augment, eval_transform
from selfsup.backbones import backbone_names, build_backbone
from selfsup.config import Config, ConfigError, load_config
from selfsup.data import DataError, ImageSet, from_array, load_images
from selfsup.evaluate import extract_features, knn_accuracy, knn_predict
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.protocols import evaluate_protocol, read_results
from selfsup.evaluate.representation import representation_metrics
from selfsup.export import export_encoder, import_weights, load_encoder
from selfsup.methods import Method, method_class, method_names
from selfsup.methods.losses import nt_xent
from selfsup.report import write_report
from selfsup.run import Run, knn_report, load_run
from selfsup.errors import TrainingError
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.run_folder import RunFolder
from selfsup.train import pretrain

__version__ = "0.1.0"
__all__ = [
    "AugmentConfig", "augment", "eval_transform", "backbone_names", "build_backbone", "Config", "ConfigError",
    "load_config", "DataError", "ImageSet", "from_array", "load_images", "extract_features", "knn_accuracy",
    "knn_predict", "Method", "method_class", "method_names", "nt_xent", "Run", "knn_report", "load_run",
    "TrainingError", "pretrain", "pretrain_and_evaluate", "RunFolder", "export_encoder", "import_weights", "load_encoder", "linear_probe",
    "evaluate_protocol", "read_results", "representation_metrics", "write_report",
]
