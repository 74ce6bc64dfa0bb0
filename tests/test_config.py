"""Config sections: each checked by its owner; dotted keys; what decides a run."""

import pytest

from vae_jax import config as config_lib
from vae_jax.registry import ConfigError


@pytest.mark.parametrize(
  "config,message",
  [
    ({"optim": {"lr": 0.1}}, "config.optim.lr: unknown key; config.optim keys: num_epochs"),
    ({"optim": {"batch_size": 12.5}}, "config.optim.batch_size=12.5: expected a int"),
    ({"data": {"binarize": 1}}, "config.data.binarize=1: expected a bool"),
    (
      {"model": {"channels": (8, 16), "name": "conv", "latent_dim": "big"}},
      "config.model.latent_dim='big': expected a int",
    ),
    (
      {"objective": {"name": "iwae", "num_samples": 3, "tc_weight": 2.0}},
      "config.objective.tc_weight=2.0: does not apply to objective 'iwae'",
    ),
    ({"training": {}}, "config.training: unknown key; the config's sections"),
    ({"seed": 2**40}, "config.seed=1099511627776: expected an integer in \\[0, 2\\*\\*31\\)"),
  ],
)
def test_each_section_refuses_bad_keys_in_one_line(config, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.parse(config)


def test_the_default_parses_to_the_reference():
  settings = config_lib.parse(config_lib.default_sections())
  assert (
    settings.seed == 1 and settings.optim.batch_size == 128 and settings.optim.learning_rate == 1e-3
  )
  (model, model_settings), (objective, objective_settings) = settings.model, settings.objective
  assert model.name == "mlp" and model_settings == {
    "latent_dim": 20,
    "compute_dtype": "float32",
    "hidden_dim": 400,
    "num_hidden_layers": 1,
    "init_scheme": "torch",
    "activation": "relu",
    "std_head": "logvar",
    "output_bias": "init",
  }
  assert objective.name == "elbo" and objective_settings["beta"] == 1.0


def test_dotted_keys_round_trip_and_only_the_chosen_entries_settings_decide_a_run():
  config = config_lib.from_flat({"model.name": "conv", "model.channels": [8, 16], "seed": 3})
  assert config.model.channels == (8, 16)  # A list, as JSON stores it, back to a tuple.
  flat = config_lib.flatten(config)
  assert config_lib.from_flat(flat).to_dict() == config.to_dict()
  effective = config_lib.effective(config)
  assert effective["model.channels"] == [8, 16] and "model.hidden_dim" not in effective
  assert "objective.tc_weight" not in effective  # Another objective's default may change freely.
  assert config_lib.differences(effective, {**effective, "run.progress": False}) == []
  assert config_lib.differences(effective, {**effective, "seed": 4}) == ["seed: 3 -> 4"]
