"""Settings per entry stay compatible with what runs and studies saved before them."""

from pathlib import Path

from vae_jax import config as config_lib, sweep

ROOT = Path(__file__).parent.parent


def test_existing_studies_keep_their_group_hashes():
  """groups/<hash>.json of studies run before settings were per entry are still found: the
  hashes as the code before issue 22 computed them (a rerun would otherwise retrain)."""
  before = {
    "beta.py": ["a58a98a6c6d1bc16"],
    "ae_vs_vae.py": ["b2514c1aa704b147", "caee72945b2805ce"],
  }
  for name, hashes in before.items():
    study = sweep.load_study(ROOT / "experiments" / "ablations" / name)
    assert [
      sweep.group_hash(study, shape, members) for shape, members in sweep.groups(study)
    ] == hashes


def test_a_config_saved_with_every_entrys_settings_and_no_plugins_still_matches():
  """Runs saved config.json with the union of all entries' settings and no plugins key:
  the other entries' keys at their defaults are ignored, and nothing differs."""
  current = config_lib.effective(config_lib.default_sections())
  saved = {k: v for k, v in current.items() if k != "plugins"}
  saved.update(
    {
      "model.channels": [16, 32],
      "model.latent_dim_1": 100,
      "objective.num_samples": 1,
      "objective.tc_weight": 1.0,
      "objective.mi_weight": 1.0,
    }
  )
  config = config_lib.from_flat(saved)
  settings = config_lib.parse(config)
  assert settings.model[0].name == "mlp" and "channels" not in settings.model[1]
  assert config_lib.effective(config) == current
  assert config_lib.differences(config_lib.effective(saved), current) == []


def test_recipes_and_a_switch_of_model_from_the_command_line_still_parse():
  from vae_jax import __main__ as cli

  cases = {
    ("--config=vae_jax/configs/iwae_2layer.py:iwae,5",): ("hvae2", "iwae", "latent_dim_1", 100),
    ("--config=vae_jax/configs/iwae_1layer.py:vae,5", "--config.model.hidden_dim=300"): (
      "mlp",
      "vae_k",
      "hidden_dim",
      300,
    ),
    ("--config=vae_jax/configs/conv.py", "--config.model.channels=(8,16)"): (
      "conv",
      "elbo",
      "channels",
      (8, 16),
    ),
    ("--config.model.name=conv", "--config.model.channels", "(4,8)"): (
      "conv",
      "elbo",
      "channels",
      (4, 8),
    ),
  }
  for args, (model, objective, key, value) in cases.items():
    parsed = cli.parse(
      [
        "train",
        "--workdir=/nonexistent/w",
        *(a.replace("vae_jax/", f"{ROOT}/vae_jax/") for a in args),
      ]
    )
    assert not isinstance(parsed, int), args
    settings = config_lib.parse(parsed[2])
    assert (settings.model[0].name, settings.objective[0].name) == (model, objective)
    assert settings.model[1][key] == value, args
