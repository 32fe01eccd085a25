"""Made the fixtures in this folder with xydiff at commit feb69f3 (config layout 1).

Kept as the record of how they were made; it runs only against that layout.
Each run is tiny (seconds on a CPU); `expected.npz` holds what its Restorer
returned for one fixed 20x28 input, so a later layout must restore the same.

  python tests/data/legacy/make_fixtures.py
"""

import os
import shutil
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..'))

from conftest import tiny  # noqa: E402
from xydiff.runs import checkpoint  # noqa: E402
from xydiff.interop import export
from xydiff.inference import restorer as inference
from xydiff.runs import state as state_lib
from xydiff.train import loop as train
from xydiff.interop import official as weights
from xydiff.configs import demo  # noqa: E402


def perturbed(config, seed):
  _, state = state_lib.init_state(config)
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  return jax.tree.map(lambda p: p + 0.02 * jax.random.normal(next(keys), p.shape), state['params'])


def trained(name, config):
  workdir = os.path.join(HERE, name)
  train.train_and_evaluate(config, workdir)
  for entry in os.listdir(workdir):  # Keep what loading reads: config and checkpoints.
    if entry not in ('config.json', 'checkpoints'):
      path = os.path.join(workdir, entry)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return workdir


def imported(name, config, seed):
  return os.path.dirname(os.path.dirname(
      checkpoint.write_imported_run(os.path.join(HERE, name), config, perturbed(config, seed))))


def main():
  image = np.random.default_rng(0).uniform(size=(20, 28, 3)).astype(np.float32)
  np.save(os.path.join(HERE, 'input.npy'), image)
  runs = {}
  config = tiny(demo.get_config(), steps=2)
  config.data.synthetic.num_eval = 1
  config.train.ema_rate = 0.9
  runs['xydeblur_run'] = trained('xydeblur_run', config)
  config = tiny(demo.get_config('diffusion'), steps=2)
  config.data.synthetic.num_eval = 1
  config.model.predictor.decoders = 2
  runs['dvsr_run'] = trained('dvsr_run', config)
  config = tiny(demo.get_config('diffusion'))
  config.model.predictor.arch = 'nafnet'
  runs['dvsr_nafnet_import'] = imported('dvsr_nafnet_import', config, 1)
  config = tiny(weights.config_for('dmphn_1_2_4'))
  runs['dmphn_import'] = imported('dmphn_import', config, 2)
  key = jax.random.key(3)
  for name, workdir in runs.items():
    out = inference.Restorer.from_workdir(workdir).restore(image, key=key)
    np.savez(os.path.join(HERE, f'{name}_expected.npz'), **out)
  for name in ('xydeblur_run', 'dvsr_nafnet_import'):
    config = inference.config_for_workdir(runs[name])
    graphdef, params, step = inference.load_for_inference(config, runs[name])
    path = os.path.join(HERE, f'{name}.safetensors')
    export.write_safetensors(path, config, params, step, ema=config.train.ema_rate > 0)
    out = inference.Restorer.from_pretrained(path).restore(image, key=key)
    np.savez(os.path.join(HERE, f'{name}.safetensors_expected.npz'), **out)


if __name__ == '__main__':
  main()
