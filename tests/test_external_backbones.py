"""Backbones from timm (`timm:<model>`) and Hugging Face (`hf:<folder>`): every image method trains
on them and resumes bitwise, bf16 and channels_last work, the encoder exports and reloads with the
same outputs, another library's state dict imports, and a Hugging Face text model serves the text
methods. The models are timm's own test networks and transformers configs of a few thousand weights."""
import pytest
import torch
from safetensors.torch import save_file

from selfsup.build import build_method, load_training_data
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.errors import ConfigError
from selfsup.export import load_encoder
from selfsup.methods import method_class, method_names
from selfsup.run import load_run
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from small_data import write_corpus

transformers = pytest.importorskip("transformers")

TINY = ["train.batch_size=16", "train.precision=fp32", "train.log_every=1", "optim.warmup_epochs=0",
        "eval.online_every=0", "train.checkpoint_every=2"]
# MAE encodes a subset of patches, which only selfsup's ViT can do: it is refused with a clear message.
IMAGE_METHODS = [m for m in method_names() if method_class(m).modality == "image" and m != "mae"]
TIMM_MODEL = "test_resnet"          # timm's smallest ResNet, made for tests


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A folder holding only a tiny ViT's config.json: random weights, built from the config."""
    folder = tmp_path_factory.mktemp("hf-vit")
    transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           patch_size=7, image_size=28, num_channels=1).save_pretrained(folder)
    return folder


def timm_available():
    try:
        from selfsup.backbones.external import _import_timm
        _import_timm()
        return True
    except (ValueError, ImportError):
        return False


needs_timm = pytest.mark.skipif(not timm_available(), reason="timm backbones need pip install 'selfsup[timm]'")


@pytest.fixture(params=["timm", "hf"])
def external(request, hf_vit):
    if request.param == "timm" and not timm_available():
        pytest.skip("timm backbones need pip install 'selfsup[timm]'")
    return f"timm:{TIMM_MODEL}" if request.param == "timm" else f"hf:{hf_vit}"


def config(method, backbone, *extra):
    return load_config(overrides=[f"method.name={method}", f"backbone.name={backbone}", *TINY, *extra])


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_image_method_trains_and_resumes_bitwise_on_timm_and_hf_backbones(method, external, tiny_fashion,
                                                                               tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(32)
    straight, resumed = straight_and_resumed(lambda: config(method, external, "train.steps=3"), data, tmp_path, 2,
                                             monkeypatch)
    assert_bitwise_equal(straight, resumed)
    run = load_run(tmp_path / "straight")
    feats = run.embed(data.images[:4])
    assert feats.shape == (4, run.backbone.feature_dim) and torch.isfinite(feats).all()


def test_mae_on_an_external_backbone_is_a_config_error_naming_the_vits(external):
    with pytest.raises(ConfigError, match="MAE needs a ViT.*vit_tiny"):
        build_method(config("mae", external), in_channels=1)


def test_bf16_and_channels_last_train_and_the_export_reloads_with_the_same_features(external, tiny_fashion,
                                                                                   tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(32)
    result = pretrain(config("simclr", external, "train.steps=2", "train.precision=bf16", "train.channels_last=true"),
                      tmp_path / "run", data=data, progress=False)
    assert torch.isfinite(torch.tensor(result.final_loss))
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    encoder = load_encoder(out)
    run = load_run(tmp_path / "run")
    run.backbone.to(memory_format=torch.contiguous_format).float().eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), run.backbone(x), rtol=0, atol=0)


def test_the_feature_dimension_comes_from_a_forward_pass(hf_vit):
    method = build_method(config("simclr", f"hf:{hf_vit}"), in_channels=1)
    assert method.backbone.feature_dim == 16
    if timm_available():
        timm_method = build_method(config("simclr", f"timm:{TIMM_MODEL}"), in_channels=3)
        with torch.no_grad():
            width = timm_method.backbone.model.eval()(torch.zeros(1, 3, 28, 28)).shape[1]
        assert timm_method.backbone.feature_dim == width


@needs_timm
def test_a_timm_state_dict_imports_without_its_classifier(tmp_path, capsys):
    import timm
    source = timm.create_model(TIMM_MODEL, num_classes=10, in_chans=3)
    weights = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    out = tmp_path / "encoder.safetensors"
    assert main(["import-weights", str(weights), "--out", str(out), "--backbone", f"timm:{TIMM_MODEL}",
                 "--key-map", "timm", "--image-size", "32"]) == 0
    assert "dropped 2 key(s)" in capsys.readouterr().out                # the classifier's weight and bias
    encoder = load_encoder(out)
    source.reset_classifier(0)
    source.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), source(x), rtol=0, atol=0)


def test_hf_weights_on_disk_are_the_starting_point(tmp_path):
    vit_config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, patch_size=7, image_size=28, num_channels=1)
    model = transformers.ViTModel(vit_config)
    model.save_pretrained(tmp_path / "vit")                             # config.json + model.safetensors
    method = build_method(config("simclr", f"hf:{tmp_path / 'vit'}"), in_channels=1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(method.backbone.state_dict()[f"model.{name}"], tensor), name


def test_unknown_names_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown; choose one of: .*hf:<folder>, timm:<model>"):
        load_config(overrides=["backbone.name=nosuch"])
    with pytest.raises(ConfigError, match="no config.json there"):
        build_method(config("simclr", f"hf:{tmp_path}"), in_channels=1)
    if timm_available():
        with pytest.raises(ConfigError, match="timm has no model 'nosuch_net'"):
            build_method(config("simclr", "timm:nosuch_net"), in_channels=1)
    with pytest.raises(ConfigError, match="backbone.width=0.5 does not apply"):
        load_config(overrides=["backbone.name=timm:resnet18", "backbone.width=0.5"])


@pytest.mark.parametrize("method,hf_config", [
    ("simcse", lambda: transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32, max_position_embeddings=32, vocab_size=50)),
    ("mlm", lambda: transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32, vocab_size=50)),
    ("clm", lambda: transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=50)),
])
def test_a_hugging_face_text_model_serves_the_text_methods(method, hf_config, tmp_path, monkeypatch):
    hf_config().save_pretrained(tmp_path / "model")
    corpus = write_corpus(tmp_path / "corpus.jsonl")

    def make_config():
        return load_config(overrides=[f"method.name={method}", f"backbone.name=hf:{tmp_path / 'model'}",
                                      f"data.source={corpus}", "text.field=body", "text.max_length=24", *TINY,
                                      "train.steps=3"])
    data = load_training_data(make_config())
    straight, resumed = straight_and_resumed(make_config, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    run = load_run(tmp_path / "straight")
    assert run.backbone.model.get_input_embeddings().num_embeddings == run.backbone.vocab_size   # our tokenizer's
    feats = run.embed(data.samples[:4])
    assert feats.shape == (4, 16) and torch.isfinite(feats).all()


def test_a_causal_hf_model_is_refused_by_mlm_and_a_bidirectional_one_by_clm(tmp_path):
    transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32).save_pretrained(tmp_path / "gpt2")
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    cfg = load_config(overrides=["method.name=mlm", f"backbone.name=hf:{tmp_path / 'gpt2'}", f"data.source={corpus}",
                                 "text.field=body", "text.max_length=24"])
    load_training_data(cfg)
    with pytest.raises(ConfigError, match="bidirectional backbone"):
        build_method(cfg)


@needs_timm
def test_a_timm_model_that_downsamples_small_images_to_nothing_is_a_config_error_naming_the_size():
    # ConvNeXt's stages divide the side by 32; a 20-pixel view ends below its last 2x2 downsampling.
    with pytest.raises(ConfigError, match="timm:convnext_atto cannot encode 20-pixel images.*augment.size"):
        build_method(config("simclr", "timm:convnext_atto", "augment.size=20"), in_channels=1)
