"""The prepared accelerator run: device-specific checks and every speed figure, as JSON lines.

  bash benchmarks/accelerator.sh                      # on the device machine (installs .whl/)
  python benchmarks/accelerator.py --tiny             # the same code on CPU, tiny sizes, seconds

Written for a machine that holds a GPU only briefly and has no network and
no TensorFlow, clu or tfds: it imports nothing that needs them, finds the
configs without an install, and every case is wrapped, so one failure prints
an `error` line and the others still run. Each line is one JSON object with a
`section` and a `case`:

  device        backend, device kind and count, where xydiff.configs came
                from; then checks, each with `passed`: bf16 forward and
                gradient of the XY U-Net against float32 within stated
                tolerances; upsample_impl 'reference' (lax.conv_transpose,
                what 'auto' picks off-CPU) against 'subpixel'; donation (a
                donated step deletes the old state, an undonated one keeps
                it); a train step with the batch sharded over every local
                device against the same step on one device.
  inference     1280x720 latency of XYDeblur and of the xydiff predictor
                (xydiff.inference.make_restore_fns), float32 and bfloat16,
                and of the official PyTorch XYDeblur.
  sampling      the gopro config's denoiser time per sampling step at 720p
                for two T (make_sampler), against one bare denoiser call and
                the predictor: `loop_overhead` is per-step time over the bare
                call, minus one.
  train_step    throughput of every packaged config in float32 and bfloat16
                at its own batch and crop (step.make_train_step, donated, best
                of a few steps after compiling), and the official PyTorch
                XYDeblur (L1, Adam) on the same device and batch.
  input_pipeline  benchmarks/input_pipeline.py's crops/s (grain; a
                subprocess), from image folders, and from tfds ArrayRecord
                records where tfds is installed.
  memory        peak device memory: JAX's memory_stats() per device and
                torch.cuda.max_memory_allocated.
  summary       errors, failed checks, wall time; the exit status is 1 if
                any case failed.

--tiny shrinks every network, batch and image so that the whole run takes
seconds on CPU (tests/test_accelerator.py runs it so); --budget_s stops
starting new cases once spent, so a slow compile cannot push the run past
the machine's limit (the skipped cases say so).
"""

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, 'benchmarks')):  # xydiff and common, however launched.
  if _path not in sys.path:
    sys.path.insert(0, _path)

from common import time_train_step, timed  # pylint: disable=wrong-import-position

CONFIGS = ('xydeblur_gopro', 'dvsr_gopro', 'gopro')
DTYPES = ('float32', 'bfloat16')

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value); through
# a dozen layers the errors add up to about a percent of the signal. Relative
# L2 errors of the whole output and of the whole gradient beyond these mean a
# layer lost precision (e.g. a float32 accumulation that went bf16).
BF16_FORWARD_TOL = 3e-2
BF16_GRAD_TOL = 6e-2
# The two up-convolution implementations compute the same sums in another
# order: in float32 at full precision they agree to rounding.
UPSAMPLE_TOL = 1e-4
# One step on one device against the batch split over all: the same loss and
# gradient up to the order of the cross-device sum.
SHARDING_RTOL = 1e-4
SHARDING_PARAM_FRACTION = 1e-3


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def import_configs() -> str:
  """Imports `xydiff.configs` (a subpackage, found from the working tree); returns where."""
  module = importlib.import_module('xydiff.configs')
  return 'installed' if 'site-packages' in module.__file__ else 'working tree'


class Sizes:
  """Every size the run uses: the real ones, or --tiny's."""

  def __init__(self, tiny: bool):
    self.tiny = tiny
    self.height, self.width = (64, 96) if tiny else (720, 1280)
    self.sampling_steps = (3, 5) if tiny else (10, 500)
    self.repeats = 1 if tiny else 3
    self.check_size = 32 if tiny else 128  # Side of the device checks' images.
    self.torch_batch, self.torch_crop = (2, 64) if tiny else (4, 256)

  def pairs(self, names):
    """(name, dtype) cases: each name in each dtype; --tiny alternates the dtypes instead,
    which still compiles every name and every dtype once, in half the compiles."""
    if self.tiny:
      return [(name, DTYPES[i % len(DTYPES)]) for i, name in enumerate(names)]
    return [(name, dtype) for name in names for dtype in DTYPES]

  def config(self, name: str, dtype: str | None = None):
    """The packaged config `name`, its batch and crop (shrunk with --tiny), `dtype` if given."""
    module = importlib.import_module(f'xydiff.configs.{name}')
    config = module.get_config()
    if dtype:
      config.model.dtype = dtype
    config.train.steps_per_call = 1
    config.train.microbatches = 1
    if self.tiny:
      config.train.batch_size, config.data.crop = 2, 64
      self.shrink(config.model)
    return config

  def shrink(self, model):
    if self.tiny:
      model.xydeblur.update(dict(width=4, num_res=1))
      for net in (model.predictor, model.denoiser):
        net.update(dict(base=4, num_res=1, multipliers=(1, 2)))

  def torch_width(self):
    return dict(width=4, num_res=1) if self.tiny else {}


class Runner:
  """Runs cases: one JSON line each, errors caught, no new case once the budget is spent."""

  def __init__(self, budget_s: float):
    self.start = time.monotonic()
    self.deadline = self.start + budget_s
    self.errors = []
    self.failed_checks = []

  def case(self, section: str, name: str, fn):
    head = {'section': section, 'case': name}
    if time.monotonic() > self.deadline:
      emit({**head, 'skipped': 'the --budget_s is spent'})
      return None
    start, cpu = time.monotonic(), time.process_time()
    try:
      record = fn()
    except Exception as e:  # pylint: disable=broad-except
      self.errors.append(f'{section}/{name}')
      emit({**head, 'error': f'{type(e).__name__}: {e}'[:2000],
            'traceback': traceback.format_exc(limit=-4)[-3000:]})
      return None
    if record.get('passed') is False:
      self.failed_checks.append(f'{section}/{name}')
    # Wall and CPU seconds of the whole case, compiling included: what it
    # costs of the run's budget.
    emit({**head, **record, 'case_s': round(time.monotonic() - start, 2),
          'case_cpu_s': round(time.process_time() - cpu, 2)})
    return record


_INITIAL_STATES = {}


def initial_state(config):
  """(graphdef, train state in host memory) of `config`, initialised once per network.

  Initialising costs about as much as compiling a step, and the parameters
  and optimizer state do not depend on the activation dtype, batch or crop:
  the float32 and bfloat16 cases and the checks share one initialisation.
  The graphdef (which holds the dtype) comes from the abstract state. Host
  copies, since every train step donates the state it is given.
  """
  import jax
  from xydiff import state as state_lib
  model = config.model.to_dict()
  model.pop('dtype')
  train = config.train.to_dict()
  train.pop('batch_size')
  key = repr((sorted(model.items()), sorted(train.items()), config.seed))
  if key not in _INITIAL_STATES:
    _, state = state_lib.init_state(config)
    _INITIAL_STATES[key] = jax.device_get(state)
  graphdef, _ = state_lib.abstract_state(config)
  return graphdef, _INITIAL_STATES[key]


def peak_bytes():
  """The largest per-device peak JAX reports (GPU/TPU); None where it reports none (CPU)."""
  import jax
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def torch_device():
  import torch
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def torch_sync():
  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def _relative_error(a, b) -> float:
  """||a - b|| / ||b|| over every leaf of two pytrees together."""
  import jax
  import numpy as np
  pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
             for x, y in pairs)
  norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for _, y in pairs)
  return (diff / max(norm, 1e-30)) ** 0.5


def _max_abs(a, b) -> float:
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------ device checks

def device_section(run: Runner, sizes: Sizes, configs_source: str):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from xydiff import state as state_lib, step as step_lib
  from xydiff.models import layers
  from xydiff.models.unet import UNet
  from xydiff.models.xydeblur import XYDeblur

  highest = lambda: jax.default_matmul_precision('highest')
  side = sizes.check_size

  def info():
    device = jax.devices()[0]
    return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
            'device_count': jax.device_count(), 'local_device_count': jax.local_device_count(),
            'process_count': jax.process_count(), 'jax': jax.__version__,
            'auto_upsample_impl': layers.resolve_upsample_impl('auto'),
            'configs_source': configs_source, 'python': sys.version.split()[0]}
  run.case('device', 'info', info)

  def loss_and_grads(model_fn, params, x, target):
    """Output and parameter gradient of a mean-square loss, jitted."""
    def loss(params):
      out = model_fn(params, x)
      return jnp.mean((out - target) ** 2), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads

  def bf16_check():
    # The xydiff predictor: an XY-decoupled U-Net, at the gopro config's widths.
    model_cfg = sizes.config('gopro').model.predictor
    kwargs = dict(in_channels=3, base=model_cfg.base, multipliers=tuple(model_cfg.multipliers),
                  num_res=model_cfg.num_res, decoders=2, upsample_impl='auto')
    x = jax.random.uniform(jax.random.key(0), (2, side, side, 3))
    target = jax.random.uniform(jax.random.key(1), x.shape)
    _, params = nnx.split(UNet(rngs=nnx.Rngs(0), **kwargs))
    # The output convolution starts at zero (a U-Net predicts a residual);
    # random weights there make the output, and every gradient, non-trivial.
    keys = iter(jax.random.split(jax.random.key(4), len(jax.tree.leaves(params))))
    params = jax.tree.map(
        lambda p: p if p.ndim < 4 or bool(jnp.any(p)) else jax.random.uniform(
            next(keys), p.shape, p.dtype, -1.0, 1.0) / (p.shape[0] * p.shape[1] * p.shape[2]) ** 0.5,
        params)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
      graphdef = nnx.graphdef(UNet(dtype=dtype, rngs=nnx.Rngs(0), **kwargs))
      fn = lambda p, y, g=graphdef: nnx.merge(g, p)(y)['output']
      with highest():
        results[jnp.dtype(dtype).name] = loss_and_grads(fn, params, x, target)
    (out16, g16), (out32, g32) = results['bfloat16'], results['float32']
    forward = _relative_error(out16, out32)
    # Kernels and biases apart: a bias gradient is a sum over the whole batch
    # and image, the first thing to go wrong if it is accumulated in bf16.
    def pick(tree, biases: bool):
      return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
              if ('bias' in jax.tree_util.keystr(path)) == biases]
    grads = {kind: _relative_error(pick(g16, kind == 'bias'), pick(g32, kind == 'bias'))
             for kind in ('kernel', 'bias')}
    return {'network': 'XY U-Net (gopro predictor)', 'size': side,
            'forward_rel_error': round(forward, 5), 'forward_tol': BF16_FORWARD_TOL,
            'kernel_grad_rel_error': round(grads['kernel'], 5),
            'bias_grad_rel_error': round(grads['bias'], 5), 'grad_tol': BF16_GRAD_TOL,
            'output_dtype_of_bf16_net': str(out16.dtype),
            'passed': bool(forward <= BF16_FORWARD_TOL
                           and max(grads.values()) <= BF16_GRAD_TOL)}
  run.case('device', 'bf16_vs_f32', bf16_check)

  def upsample_check():
    cfg = sizes.config('xydeblur_gopro').model.xydeblur
    x = jax.random.uniform(jax.random.key(2), (2, side, side, 3))
    target = jax.random.uniform(jax.random.key(3), x.shape)
    results = {}
    for impl in ('reference', 'subpixel'):
      graphdef, params = nnx.split(XYDeblur(width=cfg.width, num_res=cfg.num_res,
                                            upsample_impl=impl, rngs=nnx.Rngs(0)))
      fn = lambda p, y, g=graphdef: nnx.merge(g, p)(y)['restored']
      with highest():
        results[impl] = loss_and_grads(fn, params, x, target)
    (out_r, g_r), (out_s, g_s) = results['reference'], results['subpixel']
    forward = _max_abs(out_r, out_s)
    grad_scale = max(1.0, max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_s)))
    grad = _max_abs(g_r, g_s) / grad_scale
    return {'network': 'XYDeblur', 'precision': 'highest', 'forward_max_abs_diff': forward,
            'grad_max_abs_diff_scaled': grad, 'tol': UPSAMPLE_TOL,
            'passed': bool(forward <= UPSAMPLE_TOL and grad <= UPSAMPLE_TOL)}
  run.case('device', 'upsample_reference_vs_subpixel', upsample_check)

  def train_inputs(name, mesh):
    """(config, graphdef, state, batch): the config's small train step, placed on `mesh`."""
    config = sizes.config(name)
    config.data.crop = min(config.data.crop, 64)  # Checks, not timings: small is enough.
    config.train.batch_size = 2 * jax.device_count()
    graphdef, state = initial_state(config)
    rng = np.random.default_rng(0)
    shape = (config.train.batch_size, config.data.crop, config.data.crop, 3)
    batch = {'blur': rng.random(shape, np.float32), 'sharp': rng.random(shape, np.float32)}
    # From host memory: fresh buffers that a donated step may consume.
    state = jax.device_put(state, state_lib.replicated(mesh))
    return config, graphdef, state, state_lib.shard_batch(batch, state_lib.batch_sharding(mesh))

  def donation_check():
    mesh = state_lib.make_mesh()
    config, graphdef, state, batch = train_inputs('xydeblur_gopro', mesh)
    step = step_lib.make_train_step(config, graphdef, mesh)
    old = jax.tree.leaves(state)
    new, metrics = step(state, batch)
    jax.block_until_ready((new, metrics))
    # The batch went through the same call undonated: it must still be there,
    # or is_deleted() proves nothing.
    batch_deleted = sum(x.is_deleted() for x in jax.tree.leaves(batch))
    deleted = sum(x.is_deleted() for x in old)
    return {'state_arrays': len(old), 'deleted_after_donated_step': deleted,
            'undonated_batch_arrays_deleted': batch_deleted,
            'passed': deleted == len(old) and batch_deleted == 0}
  run.case('device', 'donation', donation_check)

  def sharding_check():
    devices = jax.devices()
    if len(devices) == 1:
      return {'devices': 1, 'passed': None,
              'note': 'one device: the sharded step is the one-device step; nothing to compare'}
    meshes = {'all': state_lib.make_mesh(),
              'one': jax.sharding.Mesh(np.asarray(devices[:1]), ('data',),
                                       axis_types=(jax.sharding.AxisType.Auto,))}
    out = {}
    for name, mesh in meshes.items():
      config, graphdef, state, batch = train_inputs('xydeblur_gopro', mesh)
      step = step_lib.make_train_step(config, graphdef, mesh, donate=False)
      with highest():
        new, metrics = step(state, batch)
      out[name] = (jax.device_get(new), jax.device_get(metrics),
                   len(batch['blur'].sharding.device_set))
    (s_all, m_all, n_all), (s_one, m_one, _) = out['all'], out['one']
    loss_err = abs(float(m_all['loss']) - float(m_one['loss'])) / abs(float(m_one['loss']))
    grad_err = (abs(float(m_all['grad_norm']) - float(m_one['grad_norm']))
                / abs(float(m_one['grad_norm'])))
    # Adam's first step moves each weight by about lr * sign(gradient): only
    # weights whose gradient is about zero may move differently, so count the
    # weights whose updates differ by over a hundredth of the learning rate.
    differ = sum(int(np.sum(np.abs(a - b) > 0.01 * config.train.lr))
                 for a, b in zip(jax.tree.leaves(s_all['params']),
                                 jax.tree.leaves(s_one['params'])))
    fraction = differ / sum(x.size for x in jax.tree.leaves(s_one['params']))
    return {'devices': len(devices), 'batch_split_over': n_all,
            'rows': config.train.batch_size, 'loss_rel_diff': loss_err,
            'grad_norm_rel_diff': grad_err, 'rtol': SHARDING_RTOL,
            'params_updated_differently': fraction, 'params_fraction_tol': SHARDING_PARAM_FRACTION,
            'passed': bool(n_all == len(devices) and loss_err <= SHARDING_RTOL
                           and grad_err <= SHARDING_RTOL
                           and fraction <= SHARDING_PARAM_FRACTION)}
  run.case('device', 'sharded_vs_one_device', sharding_check)


# ------------------------------------------------------------------ inference

def inference_section(run: Runner, sizes: Sizes):
  import jax
  from flax import nnx
  from xydiff import inference, models

  blur = jax.random.uniform(jax.random.key(0), (1, sizes.height, sizes.width, 3))
  outputs = {'xydeblur_gopro': 'restored', 'gopro': 'predictor'}
  for name, dtype in sizes.pairs(tuple(outputs)):
    output = outputs[name]
    def case(name=name, output=output, dtype=dtype):
      config = sizes.config(name, dtype)
      graphdef, params = nnx.split(models.build_model(config.model), nnx.Param)
      fn = inference.make_restore_fns(config, graphdef)[output]
      first, best = timed(fn, params, blur, jax.random.key(0), repeats=sizes.repeats)
      return {'config': name, 'network': 'XYDeblur' if output == 'restored' else
              'xydiff predictor (XY U-Net)', 'dtype': dtype,
              'size': [sizes.height, sizes.width], 'first_call_s': round(first, 3),
              'latency_s': round(best, 5), 'peak_bytes_so_far': peak_bytes()}
    run.case('inference', f'{name}_{output}_{dtype}', case)

  def torch_case():
    import torch
    from torch_refs.xydeblur import OfficialXYDeblur
    device = torch_device()
    torch.backends.cudnn.benchmark = True
    net = OfficialXYDeblur(**sizes.torch_width()).to(device).eval()
    x = torch.rand(1, 3, sizes.height, sizes.width, device=device)

    def call():
      with torch.no_grad():
        net(x)
      torch_sync()
    return _time_torch(call, sizes.repeats, {'network': 'official XYDeblur (PyTorch)',
                                             'size': [sizes.height, sizes.width]}, 'latency_s')
  run.case('inference', 'torch_official_xydeblur_float32', torch_case)


def _time_torch(call, repeats, record, key):
  import torch
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return {**record, 'torch': torch.__version__, 'device': str(torch_device()),
          'cudnn_benchmark': torch.backends.cudnn.benchmark, 'first_call_s': round(first, 3),
          key: round(best, 5)}


# ------------------------------------------------------------------ sampling

def sampling_section(run: Runner, sizes: Sizes):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from xydiff import diffusion, inference, models

  config = sizes.config('gopro')
  blur = jax.random.uniform(jax.random.key(0), (1, sizes.height, sizes.width, 3))
  base = {'config': 'gopro', 'dtype': config.model.dtype, 'size': [sizes.height, sizes.width],
          'num_samples': 1}
  bare, built = {}, []

  def model():
    """(graphdef, params), built once, inside the first case that needs them."""
    if not built:
      built.append(nnx.split(models.build_model(config.model), nnx.Param))
    return built[0]

  def bare_calls():
    graphdef, params = model()
    denoise = jax.jit(lambda p, z, level, y: nnx.merge(graphdef, p).denoise(z, level, y))
    predict = jax.jit(lambda p, y: nnx.merge(graphdef, p).predict(y)['restored'])
    level = jnp.full((1,), 0.5)
    _, bare['denoiser_s'] = timed(denoise, params, blur, level, blur, repeats=sizes.repeats)
    _, bare['predictor_s'] = timed(predict, params, blur, repeats=sizes.repeats)
    return {**base, 'denoiser_call_s': round(bare['denoiser_s'], 5),
            'predictor_call_s': round(bare['predictor_s'], 5)}
  run.case('sampling', 'bare_calls', bare_calls)

  for num_steps in sizes.sampling_steps:
    def case(num_steps=num_steps):
      graphdef, params = model()
      schedule = diffusion.linear_schedule(num_steps, 1e-4, min(0.9, 10.0 / num_steps))
      sampler = inference.make_sampler(graphdef, schedule, 1, config.diffusion.residual_scale)
      # A T-step sample is long: the first call (compile and run) and one more.
      first, total = timed(sampler, params, blur, jax.random.key(1), repeats=1)
      record = {**base, 'num_steps': num_steps, 'first_call_s': round(first, 3),
                'sample_s': round(total, 4)}
      if 'denoiser_s' in bare:
        per_step = (total - bare['predictor_s']) / num_steps
        record.update({'per_step_s': round(per_step, 5),
                       'denoiser_call_s': round(bare['denoiser_s'], 5),
                       'loop_overhead': round(per_step / bare['denoiser_s'] - 1.0, 4)})
      record['peak_bytes_so_far'] = peak_bytes()
      return record
    run.case('sampling', f'T{num_steps}', case)


# ------------------------------------------------------------------ train steps

def train_step_section(run: Runner, sizes: Sizes):
  import jax
  import numpy as np
  from xydiff import state as state_lib
  from xydiff.models import layers

  for name, dtype in sizes.pairs(CONFIGS):
    def case(name=name, dtype=dtype):
      mesh = state_lib.make_mesh()
      config = sizes.config(name, dtype)
      batch_size, crop = config.train.batch_size, config.data.crop
      graphdef, state = initial_state(config)
      state = jax.device_put(state, state_lib.replicated(mesh))
      rng = np.random.default_rng(0)
      shape = (batch_size, crop, crop, 3)
      batch = state_lib.shard_batch({'blur': rng.random(shape, np.float32),
                                     'sharp': rng.random(shape, np.float32)},
                                    state_lib.batch_sharding(mesh))
      compile_s, best, metrics = time_train_step(config, state, batch, mesh, graphdef,
                                                 repeats=sizes.repeats)
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        raise FloatingPointError(f'loss {loss} after {sizes.repeats + 1} steps')
      return {'config': name, 'dtype': dtype, 'devices': jax.device_count(),
              'upsample_impl': layers.resolve_upsample_impl(config.model.upsample_impl),
              'batch_size': batch_size, 'crop': crop, 'compile_s': round(compile_s, 2),
              'step_s': round(best, 5), 'images_per_s': round(batch_size / best, 2),
              'loss': round(loss, 5), 'peak_bytes_so_far': peak_bytes()}
    run.case('train_step', f'{name}_{dtype}', case)

  def torch_case():
    import torch
    from torch_refs.xydeblur import OfficialXYDeblur
    device = torch_device()
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    net = OfficialXYDeblur(**sizes.torch_width()).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    shape = (sizes.torch_batch, 3, sizes.torch_crop, sizes.torch_crop)
    blur, sharp = torch.rand(*shape, device=device), torch.rand(*shape, device=device)

    def call():
      optimizer.zero_grad()
      loss = torch.mean(torch.abs(net(blur)[2] - sharp))
      loss.backward()
      optimizer.step()
      torch_sync()
    record = _time_torch(call, sizes.repeats, {
        'config': 'official XYDeblur (PyTorch)', 'dtype': 'float32',
        'batch_size': sizes.torch_batch, 'crop': sizes.torch_crop}, 'step_s')
    record['images_per_s'] = round(sizes.torch_batch / record['step_s'], 2)
    return record
  run.case('train_step', 'torch_official_xydeblur_float32', torch_case)


# ------------------------------------------------------------------ input pipeline

def input_pipeline_section(run: Runner, sizes: Sizes):
  script = os.path.join(REPO, 'benchmarks', 'input_pipeline.py')

  def case():
    if importlib.util.find_spec('grain') is None:
      return {'skipped': 'grain not installed: the training input pipeline needs it'}
    command = [sys.executable, script]
    if sizes.tiny:  # Seconds: small frames.
      command += ['--quick']
    if sizes.tiny or importlib.util.find_spec('tensorflow_datasets') is None:
      command += ['--sources=folder']  # Preparing ArrayRecord records needs tfds.
    # Its own process: its decode threads do not compete with the timed cases.
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=max(run.deadline - time.monotonic(), 30), cwd=REPO)
    lines = [json.loads(l) for l in done.stdout.splitlines() if l.startswith('{')]
    if done.returncode:
      raise RuntimeError(f'input_pipeline.py exited {done.returncode}: {done.stderr[-1500:]}')
    rows = [l for l in lines if l.get('case') == 'throughput']
    if not rows:
      raise RuntimeError(f'input_pipeline.py printed no throughput line: {done.stdout[-1500:]}')
    return {'command': ' '.join(command[1:]), 'cases': [
        {k: l.get(k) for k in ('source', 'loader', 'cache', 'crop', 'batch', 'cores',
                               'crops_per_s', 'pairs_per_s')} for l in rows]}
  run.case('input_pipeline', 'crops_per_s', case)


# ------------------------------------------------------------------ memory

def memory_section(run: Runner):
  def case():
    import jax
    devices = []
    for d in jax.local_devices():
      stats = d.memory_stats()
      devices.append({'device': str(d), 'peak_bytes_in_use': (stats or {}).get('peak_bytes_in_use'),
                      'bytes_limit': (stats or {}).get('bytes_limit')})
    record = {'jax': devices, 'jax_reports_memory': any(s['peak_bytes_in_use'] is not None
                                                        for s in devices)}
    if 'torch' in sys.modules:
      import torch
      record['torch_cuda_max_memory_allocated'] = (
          torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None)
    return record
  run.case('memory', 'peak', case)


SECTIONS = ('device', 'inference', 'sampling', 'train_step', 'input_pipeline', 'memory')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--tiny', action='store_true', help='tiny sizes: the whole run on CPU')
  parser.add_argument('--budget_s', type=float, default=420.0,
                      help='no case starts after this many seconds (memory and summary always run)')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help=f'comma-separated subset of {",".join(SECTIONS)}')
  args = parser.parse_args()
  sections = args.sections.split(',')
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    parser.error(f'--sections: unknown {sorted(unknown)}; known: {SECTIONS}')

  # Let JAX grow its GPU memory instead of taking most of it at start: PyTorch
  # runs on the same GPU, and the peaks reported are then what was used.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if args.tiny:
    # Tiny timings only show that the code runs: compile at XLA's cheapest
    # optimisation level, which roughly halves the CPU compile time.
    os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''),
                                        '--xla_backend_optimization_level=0',
                                        '--xla_llvm_disable_expensive_passes=true']).strip()
  run = Runner(args.budget_s)
  sizes = Sizes(args.tiny)
  try:
    configs_source = import_configs()
  except Exception as e:  # pylint: disable=broad-except
    configs_source = f'not importable: {type(e).__name__}: {e}'
    run.errors.append('import_configs')
    emit({'section': 'device', 'case': 'import_configs', 'error': configs_source})
  if 'device' in sections:
    device_section(run, sizes, configs_source)
  if 'inference' in sections:
    inference_section(run, sizes)
  if 'sampling' in sections:
    sampling_section(run, sizes)
  if 'train_step' in sections:
    train_step_section(run, sizes)
  if 'input_pipeline' in sections:
    input_pipeline_section(run, sizes)
  run.deadline = float('inf')  # The memory line always comes.
  if 'memory' in sections:
    memory_section(run)
  emit({'section': 'summary', 'case': 'summary', 'tiny': args.tiny, 'errors': run.errors,
        'failed_checks': run.failed_checks,
        'wall_s': round(time.monotonic() - run.start, 1)})
  sys.exit(1 if run.errors or run.failed_checks else 0)


if __name__ == '__main__':
  main()
