"""An encoder on its own: export a run's backbone to one safetensors file that says how to rebuild it,
load such a file back as a ready nn.Module, and import weights saved by other libraries.

The rebuild recipe is JSON, stored in the safetensors header (so the file is self-contained) and
beside it as `<out>.json` for people to read. Nothing here unpickles anything but a foreign state
dict, and that only through torch.load(weights_only=True), which refuses code objects.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from selfsup.backbones import build_backbone_from_config
from selfsup.checkpoint import CheckpointError, atomic_write
from selfsup.config import BackboneConfig, ConfigError, backbone_config
from selfsup.run import load_run

ENCODER_FORMAT = "selfsup-encoder"


def encoder_spec(backbone_cfg: BackboneConfig, in_channels: int, image_size: int, **extra) -> dict:
    """What load_encoder needs to rebuild the backbone, plus free-form facts (input normalisation, origin)."""
    return {"format": ENCODER_FORMAT, "version": 1, "backbone": dataclasses.asdict(backbone_cfg),
            "in_channels": in_channels, "image_size": image_size, **extra}


def save_encoder(backbone: nn.Module, spec: dict, out: str | Path) -> Path:
    out = Path(out)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}
    atomic_write(out, save_safetensors_bytes(tensors, metadata={"selfsup": json.dumps(spec)}))
    atomic_write(out.with_suffix(".json"), json.dumps(spec, indent=1).encode())
    return out


def export_encoder(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the backbone of a run's newest (or given) checkpoint to `out` (.safetensors)."""
    run = load_run(run_dir, checkpoint)
    cfg = run.config
    spec = encoder_spec(cfg.backbone, cfg.data.channels, cfg.augment.size or cfg.data.size,
                        feature_dim=run.backbone.feature_dim,
                        input={"channels": cfg.data.channels, "size": cfg.data.size,
                               "eval_size": cfg.augment.eval_size or cfg.data.size,
                               "mean": list(cfg.augment.mean), "std": list(cfg.augment.std),
                               "scale": "uint8 / 255, then (x - mean) / std"},
                        origin={"run": str(Path(run_dir).resolve()), "step": run.step, "method": cfg.method.name,
                                "checkpoint": f"step-{run.step:07d}", "trained_in": cfg.train.precision},
                        # The weights are stored in fp32 and load_encoder runs them in fp32, as `selfsup embed` does.
                        precision="fp32")
    return save_encoder(run.backbone, spec, out)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The backbone saved by `selfsup export` (or `selfsup import-weights`), in eval mode on `device`.

    Its `.selfsup_spec` attribute holds the JSON recipe, including the input normalisation."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"encoder file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    if "selfsup" not in header:
        raise CheckpointError(f"{path} has no selfsup rebuild recipe in its header; export it with "
                              "`selfsup export RUN_DIR --out FILE` or import it with `selfsup import-weights`")
    spec = json.loads(header["selfsup"])
    if spec.get("format") != ENCODER_FORMAT:
        raise CheckpointError(f"{path} is not a selfsup encoder (format={spec.get('format')!r})")
    try:
        backbone_cfg = backbone_config(spec["backbone"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its backbone recipe {spec['backbone']} is not valid here ({e})") from e
    backbone = build_backbone_from_config(backbone_cfg, spec["in_channels"], spec["image_size"])
    try:
        backbone.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit a {backbone_cfg.name} built from its recipe ({e})") from e
    backbone.selfsup_spec = spec
    return backbone.to(device).eval()


# ----------------------------------------------------------------------------- ONNX

ONNX_OPSET = 17


def export_onnx(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> dict:
    """Write the image encoder of a run's newest (or given) checkpoint to `out` as ONNX, in fp32 with a
    dynamic batch size: input `images` (N, C, S, S) normalised as the .json beside it says (S the run's
    evaluation size), output `features` (N, feature_dim). With onnxruntime installed, the file is run on
    a batch of a size other than the traced one and compared with PyTorch; returns {path, bytes,
    max_abs_diff (None without onnxruntime)}. Token backbones (text, item histories) are refused: their
    padding mask depends on the input's values, which tracing would freeze."""
    run = load_run(run_dir, checkpoint)
    if not run.modality.exports_onnx:
        raise ConfigError(f"ONNX export covers image encoders, not the {run.config.modality} backbone "
                          f"{run.config.backbone.name}; use `selfsup export` (safetensors) for it")
    backbone = run.backbone.float().eval()
    cfg = run.config
    size = cfg.augment.eval_size or cfg.data.size
    example = torch.randn(2, cfg.data.channels, size, size, generator=torch.Generator().manual_seed(0))
    out, graph = Path(out), io.BytesIO()
    # The TorchScript exporter: it needs no onnxscript, and traces the encoder in eval mode.
    torch.onnx.export(backbone, (example,), graph, input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False,
                      opset_version=ONNX_OPSET)
    atomic_write(out, graph.getvalue())
    spec = encoder_spec(cfg.backbone, cfg.data.channels, size, feature_dim=backbone.feature_dim, format_file="onnx",
                        input={"name": "images", "shape": ["batch", cfg.data.channels, size, size],
                               "mean": list(cfg.augment.mean), "std": list(cfg.augment.std),
                               "scale": "uint8 / 255, then (x - mean) / std"},
                        origin={"run": str(Path(run_dir).resolve()), "step": run.step, "method": cfg.method.name})
    atomic_write(out.with_suffix(".json"), json.dumps(spec, indent=1).encode())
    return {"path": out, "bytes": out.stat().st_size, "max_abs_diff": _onnx_difference(out, backbone, example)}


def _onnx_difference(path: Path, backbone: nn.Module, example: torch.Tensor) -> float | None:
    """The largest difference between onnxruntime's and PyTorch's features on 3 inputs (None without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    batch = torch.randn(3, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
    with torch.no_grad():
        return float((exported - backbone(batch)).abs().max())


# ----------------------------------------------------------------------------- foreign weights

def _torchvision_resnet_key(key: str) -> str | None:
    """torchvision ResNet names -> ours: conv1/bn1 -> stem.0/1, layerN.B.* -> layers.N-1.B.*,
    downsample -> shortcut; the classifier (fc) has no counterpart and is dropped."""
    if key.startswith("fc."):
        return None
    key = re.sub(r"^conv1\.", "stem.0.", key)
    key = re.sub(r"^bn1\.", "stem.1.", key)
    key = re.sub(r"^layer(\d)\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)
    return key.replace(".downsample.", ".shortcut.")


def _wrapped_library_key(key: str) -> str:
    """timm and Hugging Face models sit in selfsup's wrapper as `model` (selfsup/backbones/external.py)."""
    return "model." + key


KEY_MAPS = {"torchvision-resnet": _torchvision_resnet_key, "selfsup": lambda key: key,
            "timm": _wrapped_library_key, "hf": _wrapped_library_key}


def read_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .pt/.pth/.safetensors file, unwrapping {"state_dict": ...} / {"model": ...} and a
    DistributedDataParallel "module." prefix. Pickled files load with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path} cannot be read as plain tensors ({type(e).__name__}: {e}); selfsup only "
                              "loads weights, never code") from e
    for wrapper in ("state_dict", "model", "backbone", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def import_weights(path: str | Path, backbone: nn.Module, key_map: str = "torchvision-resnet") -> list[str]:
    """Load a foreign state dict into `backbone` through an explicit key map; returns the dropped keys.

    Every backbone weight must be found with the right shape, or nothing is loaded and the message
    lists what is missing or mismatched."""
    if key_map not in KEY_MAPS:
        raise ValueError(f"unknown key map {key_map!r}; choose one of: {', '.join(KEY_MAPS)}")
    rename = KEY_MAPS[key_map]
    classifier = getattr(backbone, "classifier_keys", ())     # a timm model's head, which we drop
    mapped, dropped = {}, []
    for key, value in read_foreign_state_dict(path).items():
        ours = None if classifier and key.startswith(classifier) else rename(key)
        (dropped.append(key) if ours is None else mapped.__setitem__(ours, value))
    own = backbone.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    wrong_shape = [f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in sorted(set(own) & set(mapped)) if mapped[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(wrong_shape)} of the wrong shape (e.g. {'; '.join(wrong_shape[:2])})" if wrong_shape else ""]
        raise CheckpointError(f"{path} does not fit the backbone with key map {key_map!r}: "
                              + ", ".join(p for p in parts if p)
                              + "; check the backbone name, width, stem and input channels")
    backbone.load_state_dict(mapped)
    return dropped
