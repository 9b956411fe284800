"""Making torchvision importable next to a CPU-only torch.

The torchvision wheels on PyPI are built for CUDA. Next to a CPU build of torch (the one selfsup pins
here) their C++ operators cannot load, and torchvision 0.28 then fails at import while registering
shapes for them ("operator torchvision::nms does not exist"); so does every library that imports it
(timm, and lightning through torchmetrics). Those operators are detection's (nms, roi_align,
deform_conv2d), which no backbone calls. When their library will not load, selfsup declares their
signatures without kernels before anything imports torchvision: the import works, and calling one of
them raises torch's "no kernel" error. With a matching torchvision (PyTorch's CPU index, or a CUDA
torch) the library loads and nothing is declared.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

# torchvision 0.28's operator signatures (its csrc/ops/*.cpp).
_TORCHVISION_OPERATORS = [
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
]
# The torch.library.Library holding the declarations lives as long as the process, not this module:
# torchvision's import needs them whenever it happens, also after selfsup's modules were unloaded and
# imported again (tests/test_structure.py does), when a module global would be collected with its
# module, taking the declarations with it.
_KEEP_ALIVE = "_selfsup_torchvision_declarations"


def _has_torchvision_operators() -> bool:
    try:
        torch.ops.torchvision.nms
        return True
    except (AttributeError, RuntimeError):
        return False


def declare_torchvision_operators_if_unloadable() -> None:
    """Before torchvision is imported: if its C++ operators cannot load next to this torch, declare them."""
    if torch.version.cuda is not None or _has_torchvision_operators():
        return
    spec = importlib.util.find_spec("torchvision")       # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    library = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if library is None:
        return
    try:
        torch.ops.load_library(str(library))
        return
    except OSError:            # built against CUDA libraries this torch does not have
        pass
    declared = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OPERATORS:
        declared.define(schema)
    setattr(torch.library, _KEEP_ALIVE, declared)
