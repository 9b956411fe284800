"""Config loading: defaults, dotted overrides, type checks, error messages, YAML round trip."""
import pytest

from selfsup.config import Config, ConfigError, load_config
from selfsup.methods.simclr import SimCLR, SimCLRConfig


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert isinstance(cfg.method, SimCLRConfig)
    # The default method's recipe is the only layer over the dataclass defaults.
    expected = Config().to_dict()
    for section, values in SimCLR.recipe.items():
        expected[section].update(values)
    assert cfg.to_dict() == expected
    Config().validate()


def test_dotted_overrides_set_nested_values_with_coercion():
    cfg = load_config(overrides=["optim.lr=1", "augment.crop_scale=[0.5, 1]", "train.batch_size=64",
                                 "backbone.name=resnet34", "method.temperature=0.1", "train.channels_last=false"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.augment.crop_scale == (0.5, 1.0)
    assert type(cfg.augment.crop_scale) is tuple
    assert all(type(v) is float for v in cfg.augment.crop_scale)
    assert cfg.train.batch_size == 64
    assert cfg.backbone.name == "resnet34"
    assert cfg.method.temperature == 0.1
    assert cfg.train.channels_last is False
    # untouched neighbours keep their defaults
    assert cfg.optim.momentum == Config().optim.momentum


def test_dict_overrides():
    cfg = load_config(overrides={"optim": {"lr": 3}})
    assert cfg.optim.lr == 3.0 and type(cfg.optim.lr) is float


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optim.lrate=0.1"])
    msg = str(info.value)
    assert "optim.lrate" in msg
    for key in ("lr", "weight_decay", "momentum", "warmup_epochs"):
        assert key in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optimiser.lr=0.1"])
    msg = str(info.value)
    assert "optimiser" in msg and "optim" in msg and "train" in msg


@pytest.mark.parametrize("override,key", [("train.batch_size=abc", "train.batch_size"),
                                          ("optim.lr=fast", "optim.lr"),
                                          ("train.batch_size=2.5", "train.batch_size"),
                                          ("augment.crop_scale=[0.5]", "augment.crop_scale"),
                                          ("train.channels_last=1", "train.channels_last")])
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_negative_lr_rejected():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(overrides=["optim.lr=-0.1"])


def test_invalid_section_values_become_config_errors():
    with pytest.raises(ConfigError, match="flip_p"):
        load_config(overrides=["augment.flip_p=1.5"])
    with pytest.raises(ConfigError, match="temperature"):
        load_config(overrides=["method.temperature=0"])


def test_unknown_method():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["method.name=mocov9"])
    msg = str(info.value)
    assert "mocov9" in msg and "simclr" in msg


def test_exponent_without_dot_is_a_number():
    cfg = load_config(overrides=["optim.lr=1e-3"])
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(overrides=["optim.lr=0.3", "augment.crop_scale=[0.3, 0.9]", "augment.mean=[0.5]",
                                 "augment.std=[0.25]", "train.steps=10", "name=run-a"])
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.augment.crop_scale == (0.3, 0.9)
    assert again.name == "run-a"


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 0.5\n  momentum: 0.8\n")
    cfg = load_config(path, overrides=["optim.lr=0.25"])
    assert cfg.optim.lr == 0.25
    assert cfg.optim.momentum == 0.8


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_yaml_unknown_nested_key(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  batch_size: 32\n  bach_size: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.bach_size" in str(info.value)
    assert "batch_size" in str(info.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path)


def test_the_last_layer_that_says_how_long_to_train_decides(tmp_path):
    assert load_config().train.minutes > 0 and load_config().train.epochs == 0          # the default: a time budget
    assert (load_config(overrides=["train.epochs=2"]).train.minutes, load_config(overrides=["train.epochs=2"]).train.epochs) == (0, 2)
    path = tmp_path / "cfg.yaml"
    load_config(overrides=["train.steps=30"]).save(path)                              # every key written out
    from_file = load_config(path)
    assert (from_file.train.steps, from_file.train.epochs, from_file.train.minutes) == (30, 0, 0)
    overridden = load_config(path, overrides=["train.minutes=3"])                     # the command line beats the file
    assert (overridden.train.steps, overridden.train.epochs, overridden.train.minutes) == (0, 0, 3)
    # A recipe's length (tables: epochs) gives way to the user's, and the user's budget to nothing else.
    assert load_config(overrides=["method.name=scarf"]).train.epochs > 0
    scarf = load_config(overrides=["method.name=scarf", "train.minutes=2"])
    assert (scarf.train.epochs, scarf.train.minutes) == (0, 2)


def test_no_training_length_at_all_is_an_error():
    with pytest.raises(ConfigError, match="how long to train"):
        load_config(overrides=["train.minutes=0"])
    with pytest.raises(ConfigError, match="train.minutes"):
        load_config(overrides=["train.minutes=-1"])


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("- optim\n- train\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_on_and_off_reach_text_settings_as_words():
    """YAML reads `on` and `off` as booleans; settings whose values are words get the words back."""
    cfg = load_config(overrides=["train.sync_batchnorm=on", "method.name=clm", "text.pack=off"])
    assert (cfg.train.sync_batchnorm, cfg.text.pack) == ("on", "off")
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        load_config(overrides=["train.sync_batchnorm=maybe"])


def test_a_backbone_field_that_does_not_apply_is_an_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="backbone.heads=8 does not apply to backbone resnet18; its fields are: "
                                          "width, stem"):
        load_config(overrides=["backbone.heads=8"])
    with pytest.raises(ConfigError, match="backbone.width=0.5 does not apply to backbone vit_tiny"):
        load_config(overrides=["backbone.name=vit_tiny", "backbone.width=0.5"])
    with pytest.raises(ConfigError, match="backbone.heads=2 does not apply to backbone lstm"):
        load_config(overrides=["method.name=simcse", "backbone.name=lstm", "backbone.heads=2"])
    # Fields left at their defaults are not 'set', and a recurrent backbone has no heads to divide dim by.
    assert load_config(overrides=["method.name=simcse", "backbone.name=lstm", "backbone.dim=30"]).backbone.dim == 30
