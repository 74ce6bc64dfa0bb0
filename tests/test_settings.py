"""Settings per entry stay compatible with what runs and studies saved before them."""

from pathlib import Path

from vae_jax import config as config_lib, sweep

ROOT = Path(__file__).parent.parent


def test_existing_studies_keep_their_group_hashes():
  """groups/<hash>.json of studies run before settings were per entry are still found: the
  hashes as the code before issue 22 computed them (a rerun would otherwise retrain)."""
  before = {"beta.py": ["a58a98a6c6d1bc16"], "ae_vs_vae.py": ["b2514c1aa704b147", "caee72945b2805ce"]}
  for name, hashes in before.items():
    study = sweep.load_study(ROOT / "experiments" / "ablations" / name)
    assert [sweep.group_hash(study, shape, members) for shape, members in sweep.groups(study)] == hashes


def test_a_config_saved_with_every_entrys_settings_and_no_plugins_still_matches():
  """Runs saved config.json with the union of all entries' settings and no plugins key:
  the other entries' keys at their defaults are ignored, and nothing differs."""
  current = config_lib.effective(config_lib.default_sections())
  saved = {k: v for k, v in current.items() if k != "plugins"}
  saved.update({"model.channels": [16, 32], "model.latent_dim_1": 100, "objective.num_samples": 1,
                "objective.tc_weight": 1.0, "objective.mi_weight": 1.0})
  config = config_lib.from_flat(saved)
  settings = config_lib.parse(config)
  assert settings.model[0].name == "mlp" and "channels" not in settings.model[1]
  assert config_lib.effective(config) == current
  assert config_lib.differences(config_lib.effective(saved), current) == []
