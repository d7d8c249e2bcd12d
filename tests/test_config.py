"""Config tree: presets, precedence, typed overrides, and errors that name the key and the valid range."""
import pytest

from finessl_lab.config import Config, diff
from finessl_lab.errors import UserError
from finessl_lab.presets import PRESETS, resolve

TABLE1 = ["cifar10_n1", "cifar10_n2", "cifar10_n4", "cifar100_n4", "cifar100_n25", "cifar100_n100",
          "food101_n2", "food101_n4", "food101_n10"]


def test_every_table1_setting_and_embedded_has_a_valid_preset():
    assert set(TABLE1) | {"embedded"} <= set(PRESETS)
    for name in PRESETS:
        resolve(name)


def test_paper_preset_values():
    c1 = resolve("cifar10_n1")
    assert (c1.data.dataset, c1.data.labels_per_class, c1.optim.batch_size, c1.algorithm.finessl.gamma) == ("cifar10", 1, 8, 1.0)
    assert resolve("cifar10_n2").optim.batch_size == 16
    c = resolve("cifar100_n4")
    assert (c.model.backbone, c.model.pretrained, c.model.peft, c.model.vpt_tokens) == ("ViT-B-16", "openai", "vpt_deep", 50)
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.run.epochs, c.run.steps_per_epoch) == (0.03, 0.9, 5e-4, 30, 500)
    assert c.algorithm.threshold == 0.7 and c.algorithm.finessl.gamma == 3.0 and c.total_steps == 15000


def test_precedence_preset_file_flags_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.1\nrun:\n  seed: 5\n")
    cfg = resolve("cifar100_n4", str(f), {"run.seed": 7}, ["optim.lr=0.2", "algorithm.finessl.margin_form=paper"])
    assert cfg.optim.lr == 0.2 and cfg.run.seed == 7 and cfg.algorithm.finessl.margin_form == "paper"
    assert cfg.data.labels_per_class == 4  # from the preset, untouched


def test_yaml_round_trip(tmp_path):
    cfg = resolve("embedded", sets=["algorithm.finessl.bms=false"])
    p = tmp_path / "config.yaml"
    p.write_text(cfg.to_yaml())
    assert Config.from_yaml(p) == cfg and not diff(cfg, Config.from_yaml(p))


@pytest.mark.parametrize("item, message", [
    ("algorithm.treshold=0.5", "unknown config key 'algorithm.treshold' (did you mean 'threshold'?)"),
    ("algorithm.threshold=1.5", "algorithm.threshold=1.5 is out of range; valid: 0.0 <= value <= 1.0"),
    ("algorithm.finessl.smoothing=1", "algorithm.finessl.smoothing=1.0 is out of range; valid: 0.0 <= value < 1.0"),
    ("data.labels_per_class=0", "data.labels_per_class=0 is out of range; valid: value >= 1"),
    ("data.labels_per_class=four", "data.labels_per_class='four' is not an integer"),
    ("model.peft=lora2", "model.peft='lora2' is not valid"),
    ("run.feature_cache=maybe", "run.feature_cache='maybe' is not a boolean; valid: true or false"),
    ("optim.lr=0", "optim.lr=0.0 is out of range; valid: value > 0.0"),
    ("algorithm.name=fixmach", "unknown algorithm 'fixmach' (did you mean 'fixmatch'?)"),
    ("bogus.key=1", "unknown config key 'bogus'"),
    ("threshold=1", "must look like section.key"),
])
def test_bad_values_name_the_key_and_the_valid_range(item, message):
    with pytest.raises(UserError) as err:
        resolve("embedded", sets=[item])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_yaml_key_and_wrong_section_type(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lrate: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'optim.lrate'.*did you mean 'lr'"):
        resolve(config_file=str(f))
    f.write_text("optim: 3\n")
    with pytest.raises(UserError, match="'optim' must be a mapping"):
        resolve(config_file=str(f))


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="unknown preset 'cifar100_4'.*did you mean 'cifar100_n4'"):
        resolve("cifar100_4")


def test_feature_cache_needs_frozen_backbone():
    with pytest.raises(UserError, match="model.peft='vpt_deep'"):
        resolve("cifar100_n4", sets=["run.feature_cache=true"])


def test_sets_must_be_a_list_not_a_string():
    with pytest.raises(UserError, match=r"sets='optim.lr=0.1' is a string; valid: a list"):
        resolve("embedded", sets="optim.lr=0.1")
