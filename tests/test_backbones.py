"""ResNet backbones: output shapes, feature dims, stems, and error messages."""
import pytest
import torch

from selfsup.backbones import backbone_names, build_backbone


BASE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}

CASES = [(name, stem, width, c)
         for name in ("resnet18", "resnet34")
         for stem in ("cifar", "imagenet")
         for width in (0.25, 0.5, 1.0)
         for c in (1, 3)]
CASES += [("resnet50", stem, 0.25, c) for stem in ("cifar", "imagenet") for c in (1, 3)]


@pytest.mark.parametrize("name,stem,width,c", CASES)
def test_output_shape_and_feature_dim(name, stem, width, c):
    torch.manual_seed(0)
    model = build_backbone(name, width=width, stem=stem, in_channels=c).eval()
    expected = int(BASE_DIM[name] * width)
    assert model.feature_dim == expected
    with torch.no_grad():
        y = model(torch.randn(2, c, 8, 8))
    assert y.shape == (2, expected)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("c", [1, 3])
def test_stems_spatial_resolution(c):
    torch.manual_seed(0)
    x = torch.randn(2, c, 28, 28)
    cifar = build_backbone("resnet18", width=0.25, stem="cifar", in_channels=c).eval()
    imagenet = build_backbone("resnet18", width=0.25, stem="imagenet", in_channels=c).eval()
    with torch.no_grad():
        assert cifar.stem(x).shape == (2, 16, 28, 28)
        assert imagenet.stem(x).shape == (2, 16, 7, 7)


def test_wrong_in_channels_fails():
    model = build_backbone("resnet18", width=0.25, in_channels=1).eval()
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 8, 8))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        build_backbone("resnet101")
    msg = str(info.value)
    assert "resnet101" in msg
    for name in ("resnet18", "resnet34", "resnet50"):
        assert name in msg
    assert set(backbone_names()) >= {"resnet18", "resnet34", "resnet50"}


def test_unknown_stem_lists_choices():
    with pytest.raises(ValueError) as info:
        build_backbone("resnet18", width=0.25, stem="tiny")
    msg = str(info.value)
    assert "tiny" in msg and "cifar" in msg and "imagenet" in msg


def test_stage_maps_are_the_stages_before_pooling():
    torch.manual_seed(0)
    model = build_backbone("resnet18", width=0.25, stem="cifar", in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        maps = model.stage_maps(x)
        pooled = model(x)
    assert [tuple(m.shape) for m in maps] == [(3, 16, 28, 28), (3, 32, 14, 14), (3, 64, 7, 7), (3, 128, 4, 4)]
    torch.testing.assert_close(maps[-1].mean((2, 3)), pooled)
