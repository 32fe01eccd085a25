"""Official XYDeblur (PyTorch) checkpoints imported into xydiff restore the same images.

The PyTorch network is tests/torch_refs/xydeblur.py, the official
architecture with the official state-dict keys. The import runs through the
one path every family uses (xydiff.interop.official, `xydiff import`).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import GOPRO_SAMPLE, run_xydiff
from xydiff import images
from xydiff.errors import CheckpointImportError
from xydiff.interop import keymaps, official
from xydiff.runs import checkpoint, state as state_lib

torch = pytest.importorskip('torch')
from torch_refs.xydeblur import OfficialXYDeblur  # noqa: E402

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'


def _config(width, num_res, ema_rate=0.0):
  from xydiff.configs import xydeblur_gopro
  config = xydeblur_gopro.get_config()
  config.model.update(dict(width=width, num_res=num_res))
  config.train.ema_rate = ema_rate
  return config


def _save_official(path, net, *, with_training_state=False):
  """As the official train.py does: Final.pkl holds only 'model'; model_N.pkl more."""
  payload = {'model': net.state_dict()}
  if with_training_state:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [500, 1000], 0.5)
    payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=3)
  torch.save(payload, str(path))


def test_imported_checkpoint_restores_a_gopro_crop_like_pytorch(tmp_path):
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=8, num_res=2).eval()
  pkl = tmp_path / 'model_3.pkl'
  _save_official(pkl, net, with_training_state=True)
  workdir = tmp_path / 'imported'
  # As a user runs it; the EMA config checks that evaluation's weights are the imported ones.
  result = run_xydiff('import', 'xydeblur', str(pkl), f'--workdir={workdir}',
                      '--config.model.width=8', '--config.model.num_res=2',
                      '--config.train.ema_rate=0.999', timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'{workdir}/checkpoints/0' in result.stdout

  config = _config(8, 2, ema_rate=0.999)
  graphdef, target = jax.eval_shape(lambda: state_lib.init_state(config))
  ckpt = checkpoint.Checkpointer(str(workdir), config)
  state = ckpt.restore(target)
  ckpt.close()
  assert int(state['step']) == 0
  model = nnx.merge(graphdef, state_lib.eval_params(state))

  crop = images.to_float(images.read_image(str(FRAME)))[300:364, 500:596]  # 64x96.
  ours = model(jnp.asarray(crop)[None])
  with torch.no_grad():
    theirs = net(torch.from_numpy(crop).permute(2, 0, 1)[None])
  for name, ours_out, reference in zip(('horizontal', 'vertical', 'restored'),
                                       (*ours['residuals'], ours['restored']), theirs):
    reference = reference[0].permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(ours_out[0]) - reference).max() <= 1e-4, name
  # A random network still changes the image: the comparison is not of two no-ops.
  assert np.abs(np.asarray(ours['restored'][0]) - crop).max() > 0.05

  with pytest.raises(CheckpointImportError, match='already holds files'):
    official.import_official('xydeblur', str(pkl), str(workdir), config)


def test_a_checkpoint_that_does_not_fit_writes_nothing_and_names_the_section(tmp_path):
  """(Every key at fault listed in one line: the family contract, tests/test_families.py.)"""
  state_dict = dict(OfficialXYDeblur(width=4, num_res=2).state_dict())
  state_dict['Convs1_2.main.0.weight'] = torch.zeros(4, 8, 3, 3)
  pkl = tmp_path / 'bad.pkl'
  torch.save({'model': state_dict}, str(pkl))
  workdir = tmp_path / 'run'
  with pytest.raises(CheckpointImportError,
                     match=r"wrong shape: Convs1_2\.main\.0\.weight \(4, 8, 3, 3\) \(xydiff "
                           r"\('fuse2', 'kernel'\) needs \(1, 1, 8, 4\)"):
    official.import_official('xydeblur', str(pkl), str(workdir), _config(4, 2))
  assert not workdir.exists()  # Nothing written for a checkpoint that does not fit.

  # A checkpoint of another size names the config section it does not fit.
  torch.save({'model': OfficialXYDeblur(width=4, num_res=2).state_dict()}, str(pkl))
  with pytest.raises(CheckpointImportError, match=r"does not fit config\.model \(.*"
                     r"'num_res': 1.*unexpected: .*Encoder1\.layers\.2\.main\.0\.main\.0\.weight"):
    official.import_official('xydeblur', str(pkl), str(workdir), _config(4, 1))

  pkl.write_bytes(b'not a torch file')
  with pytest.raises(CheckpointImportError, match='cannot read .*bad.pkl'):
    official.import_official('xydeblur', str(pkl), str(workdir), _config(4, 2))


def test_importing_needs_no_torch(tmp_path, monkeypatch):
  torch.manual_seed(0)
  net = OfficialXYDeblur(width=4, num_res=1)
  _save_official(tmp_path / 'final.pkl', net)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError.
  loaded = keymaps.FORMATS['xydeblur'].read(str(tmp_path / 'final.pkl'))
  assert set(loaded) == set(net.state_dict())
  for key, tensor in net.state_dict().items():
    assert loaded[key].dtype == np.float32
    np.testing.assert_array_equal(loaded[key], tensor.numpy())


def test_max_bytes_caps_what_a_weight_file_may_make_and_the_flag_raises_it(tmp_path):
  torch.manual_seed(0)
  _save_official(tmp_path / 'final.pkl', OfficialXYDeblur(width=4, num_res=1))
  workdir = tmp_path / 'imported'
  result = run_xydiff('import', 'xydeblur', str(tmp_path / 'final.pkl'), f'--workdir={workdir}',
                      '--config.model.width=4', '--config.model.num_res=1',
                      '--max-bytes=4096', timeout=300)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert 'final.pkl' in last and 'max_bytes=4,096' in last and '--max-bytes' in last, last
  assert 'Traceback' not in result.stderr and not workdir.exists()
  official.import_official('xydeblur', str(tmp_path / 'final.pkl'), str(workdir), _config(4, 1),
                           max_bytes=1 << 20)
  assert (workdir / 'checkpoints' / '0').is_dir()


def test_a_misspelt_override_is_one_line_naming_it(tmp_path):
  result = run_xydiff('import', 'xydeblur', str(tmp_path / 'x.pkl'), f'--workdir={tmp_path / "w"}',
                      '--config.model.widht=8', timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config.model.widht=8: the config has no field 'widht'; did you mean 'width'?")
  assert 'Traceback' not in result.stderr
