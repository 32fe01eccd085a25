"""`xydiff serve` in a real browser: Debian's chromium, headless, driven by Selenium.

One server (a tiny XYDeblur run and a tiny DvSR run, picked in the page by
what they are) and one browser session serve every check here: outputs bit
for bit the Restorer's, thumbnails of the uploads, errors once in their rows,
the Blurry / Deblurred sides, and the presets and samplers of the diffusion
model. Without chromium, chromedriver,
Selenium or Gradio the checks are skipped on a developer's machine and fail
under CI (CI=true), where .ci/run installs them.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import GOPRO_SAMPLE, REPO, tiny
from test_ensemble import random_state, save_run

FRAME = GOPRO_SAMPLE / 'test' / 'GOPR0869_11_00' / 'blur' / '000020.png'
STARTUP_S = 300
RESTORE_S = 180


def _browser_missing() -> list[str]:
  missing = [name for name in ('chromium', 'chromedriver') if shutil.which(name) is None]
  return missing + [name for name in ('selenium', 'gradio')
                    if importlib.util.find_spec(name) is None]


@pytest.fixture(scope='module', autouse=True)
def browser_present():
  missing = _browser_missing()
  if missing:
    message = f'the browser test needs {", ".join(missing)} (.ci/run installs them)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny deterministic run and a tiny diffusion run, as training leaves them."""
  from xydiff.configs import demo
  made = {}
  for name, variant in (('xydeblur_run', ''), ('dvsr_run', 'diffusion')):
    config = tiny(demo.get_config(variant))
    config.inference.size_bucket = 0
    made[name] = save_run(tmp_path_factory.mktemp('serve') / name, config,
                          random_state(config)[1])
  return made


@pytest.fixture(scope='module')
def server(runs, tmp_path_factory):
  """`xydiff serve` on a free port of 127.0.0.1, two runs, a 1-megapixel limit."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  log_path = tmp_path_factory.mktemp('serve_log') / 'server.log'
  log = open(log_path, 'w')
  command = [sys.executable, '-c', 'from xydiff.cli import main; main()', 'serve',
             f'--workdir={runs["xydeblur_run"]}', f'--workdir={runs["dvsr_run"]}',
             f'--port={port}', '--max-megapixels=1']
  process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, GRADIO_ANALYTICS_ENABLED='False'))
  url = f'http://127.0.0.1:{port}/'
  deadline = time.time() + STARTUP_S
  try:
    while True:
      if process.poll() is not None:
        pytest.fail(f'xydiff serve exited with {process.returncode}:\n'
                    f'{log_path.read_text()[-3000:]}')
      try:
        with urllib.request.urlopen(url, timeout=5) as response:
          if response.status == 200:
            break
      except OSError:
        pass
      if time.time() > deadline:
        pytest.fail(f'xydiff serve did not answer at {url}:\n{log_path.read_text()[-3000:]}')
      time.sleep(1)
    yield {'url': url, 'log': log_path}
  finally:
    process.terminate()
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
    log.close()


class Page:
  """The served page in one headless chromium session, and what the checks do in it."""

  def __init__(self, url: str, downloads, log_path):
    from selenium import webdriver  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which('chromium')
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                     '--window-size=1400,1700'):
      options.add_argument(argument)
    self.driver = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=options)
    self.url, self.downloads, self.log_path = url, downloads, log_path
    self._downloads = 0

  def open(self) -> None:
    self.driver.get(self.url)
    self.wait(lambda: self.find('#xydiff-run'), 'the page to load')

  def find(self, css):
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
    return self.driver.find_elements(By.CSS_SELECTOR, css)

  def wait(self, condition, what: str, timeout: float = RESTORE_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
      value = condition()
      if value:
        return value
      time.sleep(0.3)
    pytest.fail(f'waited {timeout} s for {what}; status: {self.status()!r}; server log:\n'
                f'{self.log_path.read_text()[-2000:]}')

  def status(self) -> str:
    found = self.find('#xydiff-status')
    return found[0].text if found else ''

  def upload(self, *paths) -> None:
    self.find('#xydiff-photos input[type=file]')[0].send_keys('\n'.join(str(p) for p in paths))
    names = [os.path.basename(p) for p in paths]
    uploaded = lambda: {a.get_attribute('download') for a in self.find('#xydiff-photos a')}
    self.wait(lambda: set(names) <= uploaded(), f'the upload of {names}')

  def clear_photos(self) -> None:
    self.find('#xydiff-photos button[aria-label="Clear"]')[0].click()
    self.wait(lambda: not self.find('#xydiff-photos a'), 'the photos to clear')

  def deblur(self, run: int) -> str:
    self.find('#xydiff-run')[0].click()
    return self.wait_for_run(run)

  def wait_for_run(self, run: int) -> str:
    return self.wait(lambda: f'Run {run} ' in self.status() and self.status(), f'run {run}')

  def pick(self, css: str, label: str) -> None:
    """Chooses `label` in the Gradio dropdown `css`."""
    self.find(f'{css} input')[0].click()
    option = self.wait(lambda: self.find(f'li[aria-label="{label}"]'), f'option {label}')
    option[0].click()

  def download(self, name: str) -> str:
    """Clicks the download link of `name` and returns the file the browser saved."""
    self._downloads += 1
    folder = self.downloads / str(self._downloads)
    folder.mkdir()
    self.driver.execute_cdp_cmd('Browser.setDownloadBehavior',
                                {'behavior': 'allow', 'downloadPath': str(folder)})
    link = self.wait(lambda: [a for a in self.find('#xydiff-downloads a')
                              if a.get_attribute('download') == name], f'the link {name}')
    link[0].click()
    path = folder / name
    self.wait(lambda: path.exists() and not list(folder.glob('*.crdownload')),
              f'the download of {name}', timeout=60)
    return str(path)


@pytest.fixture(scope='module')
def page(server, tmp_path_factory):
  page = Page(server['url'], tmp_path_factory.mktemp('downloads'), server['log'])
  yield page
  page.driver.quit()


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """A 16-bit crop of the frame, a small 8-bit crop, and three bad files."""
  from xydiff import images
  folder = tmp_path_factory.mktemp('photos')
  frame = images.read_image(str(FRAME))
  crop = frame[300:364, 500:596]
  images.write_png(str(folder / 'crop.png'), crop)
  # Full 16-bit precision: levels that no 8-bit image has.
  deep = crop.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 257, crop.shape,
                                                                          dtype=np.uint16)
  images.write_png(str(folder / 'deep.png'), deep)
  (folder / 'notes.png').write_text('not an image, despite its name')
  (folder / 'truncated.png').write_bytes(FRAME.read_bytes()[:40_000])
  images.write_png(str(folder / 'huge.png'), np.zeros((900, 1200, 3), np.uint8))  # 1.08 MP
  sharp = images.read_image(str(FRAME).replace('/blur/', '/sharp/'))[300:364, 500:596]
  images.write_png(str(folder / 'sharp.png'), sharp)
  from PIL import Image
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored sideways: a viewer turns it 90 degrees clockwise.
  Image.fromarray(crop).save(folder / 'phone.jpg', exif=exif, quality=95)
  paths = {name: str(folder / f'{name}.png') for name in ('crop', 'deep', 'notes', 'truncated',
                                                          'huge', 'sharp')}
  return dict(paths, phone=str(folder / 'phone.jpg'))


def _restorer(workdir, **inference_fields):
  from xydiff.inference import restorer as inference
  from xydiff import config as run_config
  config = run_config.load(workdir)
  config.inference.update(inference_fields)
  return inference.Restorer.from_workdir(workdir, config=config)


def test_page_restores_photos_as_the_restorer_does_bit_for_bit(page, runs, photos, server):
  """A GoPro frame (8-bit) and a 16-bit photo in one upload; each download is the Restorer's."""
  from xydiff import images
  assert 'Running on local URL:  http://127.0.0.1:' in server['log'].read_text()  # The default.
  page.open()
  page.upload(FRAME, photos['deep'], photos['phone'])
  page.wait(lambda: len(page.find('#xydiff-thumbnails img')) == 3, 'the thumbnails')
  status = page.deblur(1)
  assert '3 of 3 restored' in status and '1280x720, 8-bit' in status and '16-bit' in status, status
  assert '64x96, 8-bit' in status  # The phone photo, turned upright by its EXIF tag.
  assert len(page.find('#xydiff-slider img')) >= 2  # Before and after.
  assert page.find('#xydiff-slider-sides')[0].text.split() == ['◀', 'Blurry', 'Deblurred', '▶']
  header = page.driver.execute_script(
      "const s = getComputedStyle(document.querySelector('#xydiff-status th'));"
      'return [s.whiteSpace, s.wordBreak];')
  assert header == ['nowrap', 'keep-all']  # 'width' never broken into 'wid-th'.
  model = page.find('#xydiff-model input')[0].get_attribute('value')
  assert model == 'XYDeblur, trained on synthetic blur, step 0', model  # Not the folder.
  restorer = _restorer(runs['xydeblur_run'])
  frame_png = images.read_image(page.download('000020_deblurred.png'))
  expected = images.to_uint8(restorer.restore(images.read_image(str(FRAME)))['image'])
  assert frame_png.dtype == np.uint8
  np.testing.assert_array_equal(frame_png, expected)
  deep_png = images.read_image(page.download('deep_deblurred.png'))
  assert deep_png.dtype == np.uint16  # 16 bits in, 16 bits out.
  np.testing.assert_array_equal(
      deep_png, images.to_uint16(restorer.restore(images.read_image(photos['deep']))['image']))
  phone_png = images.read_image(page.download('phone_deblurred.png'))
  assert phone_png.shape == (96, 64, 3)
  np.testing.assert_array_equal(
      phone_png, images.to_uint8(restorer.restore(images.read_image(photos['phone']))['image']))


def test_bad_files_are_reported_in_the_page_and_the_next_photo_restores(page, runs, photos):
  page.open()
  page.upload(photos['notes'], photos['truncated'], photos['huge'])
  status = page.deblur(1)
  assert '0 of 3 restored' in status, status
  # Each error once, in its photo's row, which names the photo: no toast besides.
  rows = {line.split(' ')[0]: line for line in status.splitlines()}
  assert rows['notes.png'].endswith(
      'error: cannot read the photo: not a PNG, JPEG or TIFF that xydiff reads, or damaged'), status
  assert 'error: cannot read the photo' in rows['truncated.png'], status
  assert rows['huge.png'].endswith(
      'error: the photo is 1200x900 = 1.1 MP, over the limit of 1 MP (--max-megapixels)'), status
  assert all(status.count(name) == 1 for name in ('notes.png', 'truncated.png', 'huge.png'))
  assert '/tmp' not in status  # Names, not the server's temporary paths.
  assert not [toast.text for toast in page.find('.toast-body') if toast.text], 'a toast besides'
  assert not page.find('#xydiff-thumbnails img')  # Nothing there to show.
  page.clear_photos()
  page.upload(photos['crop'])
  page.find('#xydiff-targets input[type=file]')[0].send_keys(photos['sharp'])
  page.wait(lambda: page.find('#xydiff-targets a'), 'the target upload')
  status = page.deblur(2)
  assert '1 of 1 restored' in status, status
  # Scored as the evaluator scores: its Scorer on the Restorer's output.
  from xydiff import images
  from xydiff.evaluation import scoring
  restored = _restorer(runs['xydeblur_run']).restore(images.read_image(photos['crop']))['image']
  scores = scoring.Scorer(False, False)(restored,
                                        images.to_float(images.read_image(photos['sharp'])))
  assert f"PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}" in status, (status, scores)
  assert 'LPIPS ' in status


def test_the_preset_control_changes_the_diffusion_output(page, runs, photos, tmp_path):
  """DvSR: the default preset gives the Restorer's samples; moving the preset restores again."""
  from xydiff import images
  page.open()
  page.pick('#xydiff-model', 'DvSR, trained on synthetic blur, step 0')
  page.wait(lambda: page.find('#xydiff-preset input[value=perceptual]'), 'the preset control')
  presets = page.find('#xydiff-preset')[0].text  # Explained in plain words.
  assert 'sa: sharpest on average (mean of 2 chains of 2 steps)' in presets, presets
  assert 'Steps (denoiser calls; time grows with steps)' in page.find('#xydiff-steps')[0].text
  page.upload(photos['crop'])
  status = page.deblur(1)
  assert ("preset 'sa', ancestral, 2 denoiser calls, mean of 2 samples, seed 0" in status
          and 'std max' in status), status
  assert len(page.find('#xydiff-samples-gallery img')) >= 2
  assert page.find('#xydiff-std img')
  sa = images.read_image(page.download('crop_deblurred.png'))
  crop = images.read_image(photos['crop'])
  np.testing.assert_array_equal(
      sa, images.to_uint8(_restorer(runs['dvsr_run']).restore(crop)['image']))

  page.find('#xydiff-preset input[value=perceptual]')[0].click()
  status = page.wait_for_run(2)
  assert "preset 'perceptual', ancestral, 3 denoiser calls, mean of 1 sample" in status, status
  perceptual = images.read_image(page.download('crop_deblurred.png'))
  assert np.abs(perceptual.astype(int) - sa.astype(int)).mean() > 1.0  # Really another output.
  np.testing.assert_array_equal(perceptual, images.to_uint8(_restorer(
      runs['dvsr_run'], preset='perceptual', num_samples=1).restore(crop)['image']))

  page.find('#xydiff-sampler input[value=dpmpp_2m]')[0].click()  # Another sampler, same preset.
  status = page.deblur(3)
  assert "preset 'perceptual', dpmpp_2m, 3 denoiser calls" in status, status
  np.testing.assert_array_equal(
      images.read_image(page.download('crop_deblurred.png')),
      images.to_uint8(_restorer(runs['dvsr_run'], preset='perceptual').restore(
          crop, sampler='dpmpp_2m')['image']))

  shot = tmp_path / 'serve.png'
  page.driver.save_screenshot(str(shot))
  assert images.read_image(str(shot)).shape[0] > 500
  if os.environ.get('XYDIFF_SCREENSHOT'):  # Where the README's screenshot is refreshed from.
    shutil.copy(shot, os.environ['XYDIFF_SCREENSHOT'])
