"""Backbones from other libraries, named with a prefix:

    timm:<model>   any timm model (`timm.list_models()`), built without its classifier, with the data's
                   input channels and, where the model takes one, the image size; random weights
                   (pip install 'selfsup[timm]'; timm needs torchvision)
    hf:<folder>    a Hugging Face transformers model saved on disk (a config.json, and weights in
                   safetensors if it has any): a vision model (ViT, ConvNeXt, ResNet, ...) takes
                   images, a text model (BERT, GPT-2, ...) takes selfsup's token ids
                   (pip install 'selfsup[hf]'); nothing is downloaded

Both wrap the model as `self.model`, so their weights are the library's own keys under `model.`, and
find the feature dimension with one forward pass on zeros. A text model's token embeddings are
resized to selfsup's tokenizer when the vocabularies differ (its own tokenizer is not used).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from selfsup.backbones.registry import register_backbone_family
from selfsup.backbones.text import mean_over_tokens
from selfsup.text.tokenizer import PAD


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ValueError("timm backbones need timm and torchvision: pip install 'selfsup[timm]'") from e
    return timm


def _feature_dim(module: nn.Module, example: torch.Tensor, name: str) -> int:
    """The width of module(example)'s features, found in eval mode without gradients; a ValueError
    naming the image size when the model cannot encode images that small."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            dim = module(example).shape[-1]
    except RuntimeError as e:
        raise ValueError(f"{name} cannot encode {example.shape[-1]}-pixel images ({e}); train on larger views "
                         f"(augment.size, data.size) or choose a model with less downsampling") from e
    module.train(was_training)
    return dim


class TimmBackbone(nn.Module):
    """A timm model without its classifier: images (B, C, H, W) -> its pooled features (B, feature_dim)."""

    def __init__(self, model_name: str, in_channels: int, image_size: int):
        super().__init__()
        timm = _import_timm()
        if not timm.is_model(model_name):
            raise ValueError(f"timm has no model {model_name!r}; `python -c \"import timm; "
                             f"print(timm.list_models('*{model_name[:6]}*'))\"` lists similar names")
        options = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
        # Transformers are built for one image size: the training view's, and any other (multi-crop's
        # small crops, the evaluation size) by interpolating the position table where the model can.
        # Convolutional networks take any size and refuse these arguments.
        self.model = None
        for size_options in ({"img_size": image_size, "dynamic_img_size": True}, {"img_size": image_size}):
            try:
                self.model = timm.create_model(model_name, **size_options, **options)
                break
            except TypeError:
                continue
        if self.model is None:
            self.model = timm.create_model(model_name, **options)
        classifier = self.model.pretrained_cfg.get("classifier") or ()
        self.classifier_keys = tuple(f"{name}." for name in ([classifier] if isinstance(classifier, str)
                                                             else classifier))
        self.feature_dim = _feature_dim(self.model, torch.zeros(2, in_channels, image_size, image_size),
                                         f"timm:{model_name}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _hf_model(folder: str, data_fit: dict):
    """The transformers base model of a folder: its weights when it has safetensors ones, else random
    ones from its config.json with the config fields data_fit names (channels, image size) set to the
    data's. Saved weights keep their image size (a ViT interpolates its position table) and must have
    the data's channels."""
    try:
        import transformers
    except ImportError as e:
        raise ValueError("Hugging Face backbones need transformers: pip install 'selfsup[hf]'") from e
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"hf:{folder}: no config.json there; point backbone.name=hf:<folder> at a folder "
                         "written by a transformers model's save_pretrained()")
    config = transformers.AutoConfig.from_pretrained(str(path))
    if any(path.glob("*.safetensors")):
        saved_channels = getattr(config, "num_channels", None)
        if "num_channels" in data_fit and saved_channels not in (None, data_fit["num_channels"]):
            raise ValueError(f"hf:{folder} was saved for {saved_channels}-channel images and the data has "
                             f"{data_fit['num_channels']}; use data.channels={saved_channels} or another model")
        return transformers.AutoModel.from_pretrained(str(path), config=config, use_safetensors=True)
    for key, value in data_fit.items():
        if hasattr(config, key):
            setattr(config, key, value)
    return transformers.AutoModel.from_config(config)


# Text models whose positions see only the past; transformers marks encoder-decoder halves with
# is_decoder, but not these decoder-only families.
_CAUSAL_MODEL_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "opt", "bloom",
                       "phi", "phi3", "gemma", "gemma2", "olmo", "falcon"}


class HFVisionBackbone(nn.Module):
    """A transformers vision model: images (B, C, H, W) -> its pooled output, else the mean of its last
    hidden states over tokens or positions (B, feature_dim)."""

    def __init__(self, folder: str, in_channels: int, image_size: int):
        super().__init__()
        self.model = _hf_model(folder, {"num_channels": in_channels, "image_size": image_size})
        # ViT-like models are built for one image size and interpolate their position table for others
        # (multi-crop's small crops, the evaluation size) when asked.
        self.size_options = ({"interpolate_pos_encoding": True}
                             if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {})
        self.feature_dim = _feature_dim(self, torch.zeros(2, in_channels, image_size, image_size), f"hf:{folder}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=images, **self.size_options)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        states = out.last_hidden_state
        return states.mean(1) if states.dim() == 3 else states.flatten(2).mean(-1)


class HFTextBackbone(nn.Module):
    """A transformers text model over selfsup's token ids: `tokens(ids)` its last hidden states (B, L, D),
    `forward(ids)` their mean over the non-PAD positions, as selfsup's own text backbones."""

    def __init__(self, folder: str, vocab_size: int, max_length: int):
        super().__init__()
        self.model = _hf_model(folder, {})
        config = self.model.config
        longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if longest is not None and max_length and max_length > longest:
            raise ValueError(f"hf:{folder} takes at most {longest} positions; set text.max_length <= {longest}")
        if self.model.get_input_embeddings().num_embeddings != vocab_size:
            self.model.resize_token_embeddings(vocab_size)      # selfsup's tokenizer, not the model's
        self.vocab_size, self.max_length = vocab_size, max_length
        self.causal = bool(getattr(config, "is_decoder", False)) or config.model_type in _CAUSAL_MODEL_TYPES
        self.feature_dim = config.hidden_size

    @property
    def token_embedding(self) -> nn.Embedding:
        """The model's input embedding, which a language-model head ties its weight to."""
        return self.model.get_input_embeddings()

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        return self.model(input_ids=ids, attention_mask=(ids != PAD).long()).last_hidden_state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return mean_over_tokens(self.tokens(ids), ids)


@register_backbone_family("timm")
def timm_backbone(model: str, in_channels: int = 3, image_size: int = 224) -> TimmBackbone:
    return TimmBackbone(model, in_channels, image_size)


@register_backbone_family("hf")
def hf_backbone(folder: str, in_channels: int = 3, image_size: int = 224, vocab_size: int | None = None,
                max_length: int | None = None) -> nn.Module:
    """A text model when the data is tokens (vocab_size given), else a vision model."""
    if vocab_size is not None:
        return HFTextBackbone(folder, vocab_size, max_length or 0)
    return HFVisionBackbone(folder, in_channels, image_size)
