"""Configuration: presets, overrides, round trips and the competition temperature schedule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from econ_scenes.config import PRESETS, ModelConfig, RunConfig, override, preset
from econ_scenes.errors import EconError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name: str, tmp_path: Path) -> None:
    config = preset(name).validate()
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


def test_paper_presets_follow_appendix_c4() -> None:
    unique, random = preset("paper-unique").model, preset("paper-random").model
    assert (unique.latent_dim, unique.vae_layers, unique.vae_features) == (2, 4, 32)
    assert (unique.beta, unique.gamma) == (9.54, 0.52)
    assert (random.latent_dim, random.vae_layers, random.vae_features) == (5, 3, 32)
    assert (random.beta, random.gamma, random.competition_lambda) == (1.0, 3.26, 0.0)
    assert unique.n_experts == random.n_experts == 4 and unique.n_steps == 4
    assert preset("paper-unique").train.lr == 5e-4 and preset("paper-unique").train.batch_size == 32


def test_override_and_errors(tmp_path: Path) -> None:
    config = override(preset("quick"), {"model.beta": 2.0, "train.frozen_experts": [1, 2]})
    assert config.model.beta == 2.0 and config.train.frozen_experts == (1, 2)
    with pytest.raises(EconError, match="unknown config field"):
        override(preset("quick"), {"model.nope": 1})
    with pytest.raises(EconError, match="unknown preset"):
        preset("paper-nope")
    with pytest.raises(EconError, match="frozen expert 7"):
        override(preset("quick"), {"train.frozen_experts": (7,)})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EconError, match="corrupt"):
        RunConfig.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(EconError, match="malformed"):
        RunConfig.load(tmp_path / "partial.json")


def test_init_parts_from_text_round_trip_and_errors(tmp_path: Path) -> None:
    config = override(preset("quick"), {"train.init_from": "runs/a",
                                        "train.init_parts": "attention, decoder"})
    assert config.train.init_parts == ("attention", "decoder")
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config
    assert preset("quick").train.init_parts == ("attention", "encoder", "decoder")
    for parts in ("attention,unet", "", "encoder,encoder"):
        with pytest.raises(EconError, match="init_parts"):
            override(preset("quick"), {"train.init_from": "runs/a", "train.init_parts": parts})
    # a hand-written config.json may give the names as one string
    data = config.to_dict()
    data["train"]["init_parts"] = "decoder"
    assert RunConfig.from_dict(data).train.init_parts == ("decoder",)


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("False", False), ("1", True),
                                                ("no", False), (True, True)])
def test_boolean_overrides_from_the_command_line(raw: object, expected: bool) -> None:
    """``--set train.gt_masks=true`` must give a bool, not the string "true"."""
    single = override(preset("quick"), {"model.n_experts": 1})
    assert override(single, {"train.gt_masks": raw}).train.gt_masks is expected


def test_boolean_override_rejects_other_words() -> None:
    with pytest.raises(EconError, match=r"train\.gt_masks must be true or false"):
        override(preset("quick"), {"train.gt_masks": "maybe"})


def test_balance_steps_are_checked() -> None:
    with pytest.raises(EconError, match="competition_balance_steps must be one of"):
        override(preset("quick"), {"model.competition_balance_steps": "first"})
    with pytest.raises(EconError, match="competition_balance_iterations must be >= 0"):
        override(preset("quick"), {"model.competition_balance_iterations": -1})


def test_the_usage_balance_can_be_a_warm_up() -> None:
    model = override(preset("quick"), {"model.competition_balance_iterations": 800}).model
    assert model.balance(799) == model.competition_balance > 0
    assert model.balance(800) == 0.0
    assert preset("quick").model.balance(10**6) == model.competition_balance


def test_temperature_anneals_geometrically_then_stays() -> None:
    model = dataclasses.replace(ModelConfig(), competition_temperature=0.25,
                                competition_temperature_start=4.0,
                                competition_anneal_iterations=100)
    assert model.temperature(0) == pytest.approx(4.0)
    assert model.temperature(50) == pytest.approx(1.0)  # geometric midpoint of 4 and 0.25
    assert model.temperature(100) == pytest.approx(0.25)
    assert model.temperature(10_000) == pytest.approx(0.25)
    assert ModelConfig(competition_temperature=0.3).temperature(0) == 0.3  # no annealing
    with pytest.raises(EconError, match="competition_temperature_start"):
        dataclasses.replace(model, competition_temperature_start=-1.0).validate()


def test_scope_cost_moves_linearly_then_stays() -> None:
    model = dataclasses.replace(ModelConfig(), competition_scope_cost=1.0,
                                competition_scope_cost_start=3.0,
                                competition_anneal_iterations=100)
    assert model.scope_cost(0) == pytest.approx(3.0)
    assert model.scope_cost(50) == pytest.approx(2.0)
    assert model.scope_cost(100) == model.scope_cost(5_000) == pytest.approx(1.0)
    assert ModelConfig(competition_scope_cost=2.5).scope_cost(0) == 2.5  # no schedule
    with pytest.raises(EconError, match="competition_scope_cost_start"):
        dataclasses.replace(model, competition_scope_cost_start=-1.0).validate()
