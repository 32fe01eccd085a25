"""tensorflow-datasets builders for the deblurring benchmarks, read from a manual folder.

None of the benchmark archives can be fetched by a script (they sit behind
project pages and cloud-drive links), so every builder reads the archive the
user unpacked, `manual_dir`, and never touches the network. Preparing converts
it once into tfds records under `data_dir`; later runs reuse the records, and
any tfds user can read them (`tfds.builder_from_directory`, `as_data_source`).
The records remember a fingerprint of the files they came from, and a later
manual folder that holds other files is refused in one line (`check_source`).

  BUILDERS key  configs                                  stored splits
  gopro         blur (default), blur_gamma               train, test
  hide          -                                        test_close_ups, test_long_shot
  realblur_j    -                                        train, test
  realblur_r    -                                        train, test
  prepared      gopro, hide, realblur_j, realblur_r      test

HIDE's two subsets are stored once each; its 'test' (all 2025 pairs) is the
split expression 'test_close_ups+test_long_shot', which `build_source` accepts
as 'test'. A stored 'test' would hold every pair of the two a second time.

Every example holds `blur` and `sharp` (8-bit RGB PNG, the archive's own bytes
whenever the file already is one: no re-encoding), `name`
('GOPR0384_11_00/000001', 'scene001/blur_1'), `sequence` and `frame`.
Examples are written unshuffled in the builder's order (sorted by name;
RealBlur keeps the authors' list order), so record i is the i-th name, and the
names are saved in the dataset's metadata.json so that a source opens without
reading gigabytes of images.

`build_source` returns the paired-source interface of xydiff.data (`names`,
`len()`, `load(i) -> (blur, sharp)` uint8 HxWx3) over a prepared split. Reads
are random access through ArrayRecord (`tfds.data_sources`): opening is
instant, memory stays flat however large the split, and `load` reads and
decodes one pair. Only where
records exist in TFRecord form alone (prepared elsewhere, or a platform
without the array_record package) are the encoded PNGs of the split held in
memory instead, about 2 MB a pair.

The builders are not put in tfds's global name registry: they are reached
through BUILDERS, so importing this module never collides with a catalogue
dataset of the same name, and re-importing it is harmless.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib.util
import io
import os
from typing import Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from xydiff import images
from xydiff.data import tf_cpu as tf_guard
from xydiff.data.folders import image_files, match_pairs
from xydiff.errors import DataError, ImageReadError


tf_guard.keep_tensorflow_off_accelerators()  # TF only moves bytes here.

VERSION = tfds.core.Version('1.0.0')
_RAW_IMAGES = {'blur': tfds.decode.SkipDecoding(), 'sharp': tfds.decode.SkipDecoding()}
# Bytes read from the end of every image for the source fingerprint: a PNG
# ends with its pixel stream's Adler-32 and last IDAT CRC before IEND.
_TAIL_BYTES = 32


@dataclasses.dataclass(frozen=True)
class Pair:
  """One blur/sharp pair of an archive, before it becomes a tfds example."""
  name: str
  sequence: str
  frame: str
  blur: str
  sharp: str


def _require_folder(path: str) -> str:
  if not os.path.isdir(path):
    raise DataError(f'missing folder {path}')
  return path


def _match_folders(blur_dir: str, sharp_dir: str, sequence: str) -> list[Pair]:
  """Pairs by file stem; an unpaired file is an error, never silently dropped.

  A dropped pair would change every average reported on the benchmark.
  """
  pairs = match_pairs(_require_folder(blur_dir), _require_folder(sharp_dir))
  return [Pair(f'{sequence}/{stem}' if sequence else stem, sequence, stem, blur, sharp)
          for stem, blur, sharp in pairs]


def _file_key(path: str) -> tuple[int, str]:
  """(size, hex of the last _TAIL_BYTES bytes): what the fingerprint knows of one image."""
  with open(path, 'rb') as f:
    size = os.fstat(f.fileno()).st_size
    f.seek(max(size - _TAIL_BYTES, 0))
    return size, f.read().hex()


def source_fingerprint(listing: dict[str, list[Pair]]) -> str:
  """sha256 over every split's pair names and each image's size and closing bytes.

  It keys prepared records to the files they came from, so another folder
  with the same builder and data_dir is not silently read as the first. Not
  the folder's path (data moved or mounted elsewhere is the same data), nor
  mtimes (a copy, or every host's own copy of a multi-host run, gets new
  ones); the closing bytes of a PNG hold checksums of its whole pixel stream,
  so an image re-encoded at the same size still changes the fingerprint,
  for one small read per file rather than hashing gigabytes.
  """
  digest = hashlib.sha256()
  for split in sorted(listing):
    for pair in listing[split]:
      digest.update(repr((split, pair.name, _file_key(pair.blur),
                          _file_key(pair.sharp))).encode())
  return digest.hexdigest()


def _encode_png(image: np.ndarray) -> bytes:
  from PIL import Image  # Local, as in xydiff.images.
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _stored_image(path: str) -> tuple[str | bytes, tuple[int, int]]:
  """What tfds stores for the image at `path`, and its (height, width).

  An 8-bit RGB PNG, what the benchmark archives hold, goes in byte for byte:
  handed a path, tfds's Image feature stores the file's bytes without
  decoding or re-encoding them, so preparing is I/O-bound and the records
  hold the authors' exact files. Pillow's `verify` still checks every
  chunk's CRC, so a truncated or corrupt file fails here, naming it, rather
  than in the middle of a training run. Anything else (grey, palette, alpha,
  16-bit, JPEG) is decoded by xydiff.images.read_image and re-encoded as 8-bit
  RGB PNG, so that every reader of the records (TF, Pillow, OpenCV) decodes
  the same RGB uint8 pixels that `TfdsPairs.load` returns.
  """
  from PIL import Image
  try:
    header = images.png_header(path)
    if header is not None and header[2] == 8 and header[3] == images.PNG_RGB:
      with Image.open(path) as img:
        img.verify()
      return path, (header[1], header[0])
    image = images.read_image(path)
  except ImageReadError as e:
    raise DataError(str(e)) from None
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's reports of damaged files.
    raise DataError(f'cannot read image {path}: {e}') from None
  if image.dtype == np.uint16:
    image = images.to_uint8(images.to_float(image))
  return _encode_png(image), image.shape[:2]


class PairedImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: features, manual_dir checks, ordered examples, names metadata.

  A subclass lists its archive's pairs per split in `list_pairs`; everything
  else (what is stored, in which order, how errors read) is common, so the
  five benchmarks behave alike.
  """

  VERSION = VERSION
  # tfds 4.9.x derives code_path through `importlib_resources`, which it only
  # declares for Python < 3.9, so preparing fails with ModuleNotFoundError on
  # newer Pythons (tensorflow/datasets#11212). The path only locates an
  # optional checksums.tsv of downloads, and these builders download nothing.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {'1.0.0': 'First release: blur/sharp PNG pairs with name, sequence, frame.'}
  DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''
  # Split names build_source accepts besides the stored ones, as tfds split
  # expressions over stored splits (no data is stored twice).
  SPLIT_ALIASES: dict[str, str] = {}

  @abc.abstractmethod
  def list_pairs(self, manual_dir: str) -> dict[str, list[Pair]]:
    """The pairs of every stored split; raises DataError naming what is missing."""

  def check_manual_dir(self, manual_dir: str | os.PathLike | None) -> dict[str, list[Pair]]:
    """`list_pairs` behind a check that manual_dir is set and exists.

    `build_source` calls this before tfds creates anything under data_dir, so
    a wrong path costs nothing and the error says where the data belongs.
    """
    if not manual_dir:
      raise DataError(f'no manual_dir given for {self.name}: point it at the unpacked '
                      f'archive.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
      raise DataError(f'missing folder {manual_dir} (manual_dir of {self.name}).\n'
                      f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    listing = self.list_pairs(manual_dir)
    for split, pairs in listing.items():
      if not pairs:
        raise DataError(f'{self.name} split {split!r} has no image pairs under {manual_dir}')
      seen = set()
      for pair in pairs:
        if pair.name in seen:
          raise DataError(f'{self.name} split {split!r} names {pair.name!r} twice '
                          f'(second time: {pair.blur})')
        seen.add(pair.name)
    return listing

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly rather than dataset_info_from_configs: the latter
    # would read README.md/CITATIONS.bib of whatever folder this module is in.
    image = tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png')
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'blur': image, 'sharp': image, 'name': tfds.features.Text(),
            'sequence': tfds.features.Text(), 'frame': tfds.features.Text()}),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        # Record i is the i-th pair of list_pairs (name order but for
        # RealBlur's list order): evaluation with max_images takes the same
        # pairs as FolderPairs, and the names need no reading back.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # tfds's report of a missing or empty manual_dir.
      raise DataError(str(e)) from None
    listing = self.check_manual_dir(manual_dir)
    self.info.metadata['names'] = {split: [p.name for p in pairs]
                                   for split, pairs in listing.items()}
    # What check_source compares a later manual_dir with.
    self.info.metadata['source'] = {'manual_dir': os.path.abspath(manual_dir),
                                    'fingerprint': source_fingerprint(listing)}
    return {split: self._generate_examples(pairs) for split, pairs in listing.items()}

  def _generate_examples(self, pairs: Sequence[Pair]) -> Iterator[tuple[int, dict]]:
    # With shuffling disabled tfds writes examples in the order of their
    # integer keys. Past 1 GB it first spills them into 1000 temporary buckets
    # by key range over [0, 2**128) and sorts one bucket at a time in memory:
    # keys 0, 1, 2, ... would all land in bucket 0 and hold the whole split
    # (4 GB for GoPro train) in memory, so the keys are spread over the range.
    key_step = 2**128 // max(len(pairs), 1)
    for index, pair in enumerate(pairs):
      blur, blur_size = _stored_image(pair.blur)
      sharp, sharp_size = _stored_image(pair.sharp)
      if blur_size != sharp_size:
        raise DataError(f'{pair.blur} is {blur_size[1]}x{blur_size[0]} but its partner '
                        f'{pair.sharp} is {sharp_size[1]}x{sharp_size[0]}')
      yield index * key_step, {'blur': blur, 'sharp': sharp, 'name': pair.name,
                               'sequence': pair.sequence, 'frame': pair.frame}


_GOPRO_CITATION = """@inproceedings{nah2017deep,
  title={Deep Multi-Scale Convolutional Neural Network for Dynamic Scene Deblurring},
  author={Nah, Seungjun and Kim, Tae Hyun and Lee, Kyoung Mu},
  booktitle={CVPR},
  year={2017}
}"""

_HIDE_CITATION = """@inproceedings{shen2019human,
  title={Human-Aware Motion Deblurring},
  author={Shen, Ziyi and Wang, Wenguan and Lu, Xiankai and Shen, Jianbing and Ling, Haibin
          and Xu, Tingfa and Shao, Ling},
  booktitle={ICCV},
  year={2019}
}"""

_REALBLUR_CITATION = """@inproceedings{rim2020real,
  title={Real-World Blur Dataset for Learning and Benchmarking Deblurring Algorithms},
  author={Rim, Jaesung and Lee, Haeyun and Won, Jucheol and Cho, Sunghyun},
  booktitle={ECCV},
  year={2020}
}"""


@dataclasses.dataclass
class GoproConfig(tfds.core.BuilderConfig):
  """Which blurred frames to pair with sharp/: blur/ (most papers) or blur_gamma/."""
  blur_folder: str = 'blur'


class Gopro(PairedImageBuilder, skip_registration=True):
  """GoPro (GOPRO_Large): 2103 train and 1111 test pairs of 1280x720 frames."""

  name = 'gopro'
  BUILDER_CONFIGS = [
      GoproConfig(name='blur', blur_folder='blur',
                  description='blur/: frames averaged as recorded (the usual benchmark).'),
      GoproConfig(name='blur_gamma', blur_folder='blur_gamma',
                  description=('blur_gamma/: frames averaged after undoing a gamma-2.2 '
                               'camera curve, near linear intensity.')),
  ]
  DEFAULT_CONFIG_NAME = 'blur'
  DESCRIPTION = ('GoPro dynamic-scene deblurring benchmark (Nah et al., CVPR 2017): blurred '
                 'frames averaged from 240 fps GoPro video with the middle frame as sharp.')
  HOMEPAGE = 'https://seungjunnah.github.io/Datasets/gopro.html'
  CITATION = _GOPRO_CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download GOPRO_Large.zip from Seungjun Nah's GoPro dataset page (the dataset of
"Deep Multi-scale Convolutional Neural Network for Dynamic Scene Deblurring",
CVPR 2017) and unzip it. manual_dir is the unzipped GOPRO_Large folder (the
folder holding GOPRO_Large/ is accepted too):
  <manual_dir>/train/<sequence>/{blur,blur_gamma,sharp}/<frame>.png   2103 pairs, 22 sequences
  <manual_dir>/test/<sequence>/{blur,blur_gamma,sharp}/<frame>.png    1111 pairs, 11 sequences
Config 'blur' pairs blur/ with sharp/, config 'blur_gamma' pairs blur_gamma/ with sharp/."""

  def list_pairs(self, manual_dir: str) -> dict[str, list[Pair]]:
    root = manual_dir
    nested = os.path.join(manual_dir, 'GOPRO_Large')
    if not os.path.isdir(os.path.join(root, 'train')) and os.path.isdir(nested):
      root = nested
    listing = {}
    for split in ('train', 'test'):
      split_dir = _require_folder(os.path.join(root, split))
      pairs = []
      for sequence in sorted(os.listdir(split_dir)):
        sequence_dir = os.path.join(split_dir, sequence)
        if os.path.isdir(sequence_dir):
          pairs += _match_folders(os.path.join(sequence_dir, self.builder_config.blur_folder),
                                  os.path.join(sequence_dir, 'sharp'), sequence)
      listing[split] = pairs
    return listing


class Hide(PairedImageBuilder, skip_registration=True):
  """HIDE test set: 2025 pairs in two subsets, close-ups and long shots."""

  name = 'hide'
  SPLIT_ALIASES = {'test': 'test_close_ups+test_long_shot'}
  DESCRIPTION = ('HIDE human-aware motion deblurring benchmark (Shen et al., ICCV 2019), '
                 'test set; usually evaluated with models trained on GoPro.')
  HOMEPAGE = 'https://github.com/joanshen0508/HA_deblur'
  CITATION = _HIDE_CITATION
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the HIDE dataset archive from the link on the GitHub page of the HIDE
paper ("Human-Aware Motion Deblurring", Shen et al., ICCV 2019) and unzip it.
manual_dir is the folder it was unzipped into, the one holding HIDE_dataset/
(the HIDE_dataset folder itself is accepted too):
  <manual_dir>/HIDE_dataset/GT/<name>.png                    sharp frames
  <manual_dir>/HIDE_dataset/test/test-close-ups/<name>.png   blurred, same names as in GT/
  <manual_dir>/HIDE_dataset/test/test-long-shot/<name>.png   blurred, same names as in GT/
Splits test_close_ups and test_long_shot; both together (2025 pairs) are
'test_close_ups+test_long_shot', which build_source calls 'test'."""

  _SUBSETS = (('test_close_ups', 'test-close-ups'), ('test_long_shot', 'test-long-shot'))

  def list_pairs(self, manual_dir: str) -> dict[str, list[Pair]]:
    root = os.path.join(manual_dir, 'HIDE_dataset')
    if not os.path.isdir(root) and os.path.isdir(os.path.join(manual_dir, 'GT')):
      root = manual_dir  # manual_dir is HIDE_dataset itself.
    gt_dir = os.path.join(root, 'GT')
    if not os.path.isdir(gt_dir):
      raise DataError(f'missing folder {gt_dir} (manual_dir may also be the HIDE_dataset '
                      'folder itself, holding GT/ and test/)')
    sharp = image_files(gt_dir)
    listing = {}
    for split, folder in self._SUBSETS:
      blur_dir = _require_folder(os.path.join(root, 'test', folder))
      pairs = []
      for stem, blur in image_files(blur_dir).items():
        if stem not in sharp:
          raise DataError(f'{blur} has no partner in {gt_dir}')
        pairs.append(Pair(f'{folder}/{stem}', folder, stem, blur, sharp[stem]))
      listing[split] = pairs
    return listing


def _realblur_instructions(variant: str, archive_folder: str) -> str:
  return f"""\
Download the RealBlur dataset archive from the RealBlur project page ("Real-World
Blur Dataset for Learning and Benchmarking Deblurring Algorithms", Rim et al.,
ECCV 2020) and extract it. manual_dir is the extracted folder holding the list files:
  <manual_dir>/RealBlur_{variant}_train_list.txt   3758 lines "gt_path blur_path"
  <manual_dir>/RealBlur_{variant}_test_list.txt    980 lines "gt_path blur_path"
  <manual_dir>/{archive_folder}/sceneNNN/{{gt,blur}}/{{gt,blur}}_M.png
The paths in the list files are relative to manual_dir."""


class _RealBlur(PairedImageBuilder, skip_registration=True):
  """RealBlur (J: camera JPEGs, R: raw files): 3758 train and 980 test pairs each."""

  VARIANT = ''  # 'J' or 'R'.
  ARCHIVE_FOLDER = ''
  HOMEPAGE = 'https://cg.postech.ac.kr/research/realblur/'
  CITATION = _REALBLUR_CITATION

  def list_pairs(self, manual_dir: str) -> dict[str, list[Pair]]:
    _require_folder(os.path.join(manual_dir, self.ARCHIVE_FOLDER))
    return {split: self._read_list(manual_dir, split) for split in ('train', 'test')}

  def _read_list(self, manual_dir: str, split: str) -> list[Pair]:
    list_path = os.path.join(manual_dir, f'RealBlur_{self.VARIANT}_{split}_list.txt')
    if not os.path.isfile(list_path):
      raise DataError(f'missing list file {list_path}')
    pairs = []
    with open(list_path) as f:
      for line_number, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        if len(fields) != 2:
          raise DataError(f'line {line_number} of {list_path} should be "gt_path blur_path", '
                          f'got {line.strip()!r}')
        sharp, blur = (os.path.join(manual_dir, *field.split('/')) for field in fields)
        for path in (sharp, blur):
          if not os.path.isfile(path):
            raise DataError(f'missing image {path} (line {line_number} of {list_path})')
        parts = fields[1].split('/')
        sequence = parts[-3] if len(parts) >= 3 else ''
        frame = os.path.splitext(parts[-1])[0]
        pairs.append(Pair(f'{sequence}/{frame}' if sequence else frame, sequence, frame,
                          blur, sharp))
    return pairs


class RealblurJ(_RealBlur, skip_registration=True):
  """RealBlur-J: camera-processed JPEGs, stored by the authors as PNG."""

  name = 'realblur_j'
  VARIANT = 'J'
  ARCHIVE_FOLDER = 'RealBlur-J_ECC_IMCORR_centroid_itensity_ref'
  DESCRIPTION = ('RealBlur-J (Rim et al., ECCV 2020): real camera-shake blur with aligned '
                 'sharp references, camera JPEG pipeline.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _realblur_instructions(VARIANT, ARCHIVE_FOLDER)


class RealblurR(_RealBlur, skip_registration=True):
  """RealBlur-R: images developed from the camera's raw files."""

  name = 'realblur_r'
  VARIANT = 'R'
  ARCHIVE_FOLDER = 'RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref'
  DESCRIPTION = ('RealBlur-R (Rim et al., ECCV 2020): real camera-shake blur with aligned '
                 'sharp references, developed from raw images.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _realblur_instructions(VARIANT, ARCHIVE_FOLDER)


@dataclasses.dataclass
class PreparedConfig(tfds.core.BuilderConfig):
  """Which test set of the prepared layout: the folder name under test/."""
  folder: str = ''


class Prepared(PairedImageBuilder, skip_registration=True):
  """The test sets as MPRNet, Restormer and HI-Diff distribute them: input/target folders."""

  name = 'prepared'
  BUILDER_CONFIGS = [
      PreparedConfig(name='gopro', folder='GoPro', description='GoPro test set, 1111 pairs.'),
      PreparedConfig(name='hide', folder='HIDE', description='HIDE test set, 2025 pairs.'),
      PreparedConfig(name='realblur_j', folder='RealBlur_J',
                     description='RealBlur-J test set, 980 pairs.'),
      PreparedConfig(name='realblur_r', folder='RealBlur_R',
                     description='RealBlur-R test set, 980 pairs.'),
  ]
  DEFAULT_CONFIG_NAME = 'gopro'
  DESCRIPTION = ('Deblurring test sets in the flat input/target layout that MPRNet, Restormer '
                 'and HI-Diff distribute; sequence is empty because that layout drops it.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the motion-deblurring test sets from the links in the README of the
MPRNet, Restormer or HI-Diff GitHub repository and unzip them. manual_dir is
the folder holding test/:
  <manual_dir>/test/GoPro/{input,target}/<name>.png        1111 pairs
  <manual_dir>/test/HIDE/{input,target}/<name>.png         2025 pairs
  <manual_dir>/test/RealBlur_J/{input,target}/<name>.png   980 pairs
  <manual_dir>/test/RealBlur_R/{input,target}/<name>.png   980 pairs
input/ is blurred, target/ sharp, paired by file name. Configs gopro, hide,
realblur_j, realblur_r read one folder each; only that folder must exist."""

  def list_pairs(self, manual_dir: str) -> dict[str, list[Pair]]:
    folder = os.path.join(manual_dir, 'test', self.builder_config.folder)
    _require_folder(folder)
    return {'test': _match_folders(os.path.join(folder, 'input'),
                                   os.path.join(folder, 'target'), '')}


BUILDERS: dict[str, type[PairedImageBuilder]] = {
    'gopro': Gopro, 'hide': Hide, 'realblur_j': RealblurJ, 'realblur_r': RealblurR,
    'prepared': Prepared}


def make_builder(name: str, data_dir: str | os.PathLike | None,
                 config_name: str | None = None) -> PairedImageBuilder:
  """The builder of BUILDERS[name] (and config) over `data_dir`; no data is touched.

  An empty data_dir means tfds's default (TFDS_DATA_DIR, else ~/tensorflow_datasets).
  """
  if name not in BUILDERS:
    raise DataError(f'unknown tfds builder {name!r}: choose one of {sorted(BUILDERS)}')
  cls = BUILDERS[name]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config_name and config_name not in configs:
    raise DataError(f'{name} has no config {config_name!r}: '
                    + (f'choose one of {configs}' if configs else 'it has no configs'))
  return cls(data_dir=os.fspath(data_dir) if data_dir else None,
             config=config_name or None)


def record_format() -> str:
  """The file format to prepare: ArrayRecord for random access where installed."""
  return 'array_record' if importlib.util.find_spec('array_record') else 'tfrecord'


def prepare(builder: PairedImageBuilder, manual_dir: str | os.PathLike | None) -> bool:
  """Prepares `builder`'s records from manual_dir unless they exist; True if it built.

  Existing records are reused when manual_dir is unset or gone. When it
  exists it must be the records' source (`check_source`): records keep their
  first source, and any other folder is refused in one line rather than
  silently evaluated as the first one's pairs, or prepared over records that
  other runs may be reading.
  Several processes may prepare the same records at once (every host of a
  multi-host run on a shared data_dir): tfds writes each copy to its own
  temporary folder and renames it into place, the first rename wins, and the
  others find complete records and use them. After a lost race `builder`
  itself is stale; open the records with a new one (`build_source` does).
  """
  if builder.data_path.exists():  # tfds renames a finished dataset into place.
    if builder.is_prepared():
      if manual_dir and os.path.isdir(manual_dir):
        check_source(builder, manual_dir)
      return False
    raise DataError(f'{builder.data_path} exists but holds no complete tfds dataset: '
                    'delete it to prepare again')
  builder.check_manual_dir(manual_dir)  # Before tfds creates anything under data_dir.
  try:
    builder.download_and_prepare(
        file_format=record_format(),
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir), try_download_gcs=False))
  except OSError:  # The rename onto another process's finished records failed.
    config = builder.builder_config.name if builder.builder_config else None
    if make_builder(builder.name, builder.data_dir_root, config).is_prepared():
      return False
    raise
  return True


def check_source(builder: PairedImageBuilder, manual_dir: str | os.PathLike) -> None:
  """Raises DataError unless `builder`'s prepared records came from manual_dir's files.

  Refused rather than prepared again: the records may be shared (other runs,
  other hosts on the same data_dir), preparing GoPro costs minutes and
  gigabytes, and a folder that differs is often the wrong one (a partial
  copy, another config's data), which re-preparing would silently adopt.
  Records prepared before fingerprints were stored are checked by their
  pair names alone.
  """
  manual_dir = os.fspath(manual_dir)
  listing = builder.check_manual_dir(manual_dir)
  metadata = builder.info.metadata or {}
  stored = metadata.get('source') or {}
  names = metadata.get('names') or {}
  if 'fingerprint' in stored:
    same = stored['fingerprint'] == source_fingerprint(listing)
  else:
    same = all(names.get(split) == [p.name for p in pairs] for split, pairs in listing.items())
  if same:
    return
  old = stored.get('manual_dir', 'another folder')
  pairs = lambda n: f'{n} pair' + ('' if n == 1 else 's')
  raise DataError(f'{builder.data_path} holds {builder.name} records prepared from {old} '
                  f'({pairs(sum(map(len, names.values())))}), which differ from the files in '
                  f'{manual_dir} ({pairs(sum(map(len, listing.values())))}): use another '
                  f'data_dir to prepare {manual_dir} there, or delete {builder.data_path} to '
                  'prepare it again')


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _decode_png(data: bytes) -> np.ndarray:
  """RGB uint8 HxWx3 from the stored bytes (8-bit RGB PNG, see _stored_image)."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img if img.mode == 'RGB' else img.convert('RGB'))


class TfdsPairs:
  """A paired-image source over a prepared split: `names`, `len()`, `load(i)`.

  Pairs are decoded one at a time on `load`, so memory does not grow with the
  split; TrainBatches keeps its own small cache of decoded pairs.
  """

  def __init__(self, builder: PairedImageBuilder, split: str):
    stored = list(builder.info.splits)
    expression = builder.SPLIT_ALIASES.get(split, split)
    parts = expression.split('+')
    if any(part not in stored for part in parts):
      raise DataError(f'{builder.info.full_name} has no split {split!r}: choose one of '
                      f'{sorted(stored) + sorted(builder.SPLIT_ALIASES)}')
    self.builder = builder
    self.split = split
    formats = {f.value for f in builder.info.available_file_formats()}
    if 'array_record' in formats:
      self.storage = 'array_record'
      self._records = builder.as_data_source(expression, decoders=_RAW_IMAGES,
                                             file_format='array_record')
      saved = (builder.info.metadata or {}).get('names', {})
      if all(part in saved for part in parts):
        self.names = [name for part in parts for name in saved[part]]
      else:  # Records prepared without the names metadata: read them back once.
        self.names = [_text(self._records[i]['name']) for i in range(len(self._records))]
    else:
      self.storage = 'memory'
      dataset = builder.as_dataset(expression, decoders=_RAW_IMAGES, shuffle_files=False)
      self._records = list(tfds.as_numpy(dataset))
      self.names = [_text(record['name']) for record in self._records]
    if len(self.names) != len(self._records):
      raise DataError(f'{builder.data_path} lists {len(self.names)} names for split {split!r} '
                      f'but holds {len(self._records)} records: delete it to prepare again')

  def __len__(self) -> int:
    return len(self.names)

  def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    record = self._records[index]
    name = _text(record['name'])
    if name != self.names[index]:
      raise DataError(f'record {index} of {self.builder.data_path} split {self.split!r} is '
                      f'{name!r}, not {self.names[index]!r}: delete the folder to prepare again')
    blur, sharp = _decode_png(record['blur']), _decode_png(record['sharp'])
    if blur.shape != sharp.shape:
      raise DataError(f'{name} in {self.builder.data_path}: blur is {blur.shape[1]}x'
                      f'{blur.shape[0]} but sharp is {sharp.shape[1]}x{sharp.shape[0]}')
    return blur, sharp


def build_source(name: str, manual_dir: str | os.PathLike | None,
                 data_dir: str | os.PathLike | None, split: str,
                 config_name: str | None = None) -> TfdsPairs:
  """The paired source of `split` of BUILDERS[name], preparing its records first if needed.

  Preparing happens once per (data_dir, builder, config); every later call,
  in this process or another, opens the existing records.
  """
  prepare(make_builder(name, data_dir, config_name), manual_dir)
  # A new builder reads what is on disk, whoever prepared it.
  return TfdsPairs(make_builder(name, data_dir, config_name), split)


__all__ = ['BUILDERS', 'Gopro', 'Hide', 'Pair', 'PairedImageBuilder', 'Prepared', 'RealblurJ',
           'RealblurR', 'TfdsPairs', 'VERSION', 'build_source', 'check_source', 'make_builder',
           'prepare', 'record_format', 'source_fingerprint']
