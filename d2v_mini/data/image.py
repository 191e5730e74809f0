"""Image data: the data2vec / BEiT augmentation, Fashion-MNIST, CIFAR-10 and ImageNet-style folders.

Every item is a dict(source=float [C, H, W], label=int), so `torch.utils.data.default_collate`
batches them into dict(source=float [B, C, H, W], label=long [B]).

Transforms take a PIL image. `channels=3` turns grayscale images (Fashion-MNIST) into RGB by
replicating the gray channel, so a 3-channel ViT can read them; `channels=1` does the reverse.
"""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..errors import DataFileError
from . import atomic_file, cache_dir
from .download import ensure

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STATS = {  # per-channel pixel mean / std of the original training sets, for `mean=` / `std=`
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
BICUBIC = T.InterpolationMode.BICUBIC


class ToChannels:
    """PIL image -> PIL image with `channels` channels (3: RGB, gray replicated; 1: luminance)."""

    def __init__(self, channels: int):
        assert channels in (1, 3), "channels must be 1 or 3"
        self.mode = "RGB" if channels == 3 else "L"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert(self.mode)


def _normalize(channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> T.Normalize:
    """ImageNet statistics by default (0.5 / 0.5 for one channel); one value is repeated per channel."""
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = tuple(std) if std is not None else (IMAGENET_STD if channels == 3 else (0.5,))
    return T.Normalize(mean * channels if len(mean) == 1 else mean, std * channels if len(std) == 1 else std)


def pretrain_transform(image_size: int, channels: int = 3, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, scale: tuple[float, float] | None = None) -> Callable:
    """data2vec's pretraining augmentation (the DV BEiT fork's `datasets.py`), PIL -> float [C, S, S].

    ColorJitter(0.4, 0.4, 0.4) -> RandomHorizontalFlip -> RandomResizedCrop(S, bicubic) -> ToTensor
    -> Normalize. The teacher and the student see the same augmented view. `scale` defaults to BEiT's
    (0.08, 1.0) for S >= 64 but to (0.2, 1.0) for small images: an 8% crop of a 28- or 32-pixel
    image is ~8 pixels wide, too little content to predict anything from (MAE uses 0.2 for the
    same reason).
    """
    scale = scale or ((0.08, 1.0) if image_size >= 64 else (0.2, 1.0))
    return T.Compose([
        ToChannels(channels),
        T.ColorJitter(0.4, 0.4, 0.4),
        T.RandomHorizontalFlip(),
        T.RandomResizedCrop(image_size, scale=scale, interpolation=BICUBIC),
        T.ToTensor(),
        _normalize(channels, mean, std),
    ])


def eval_transform(image_size: int, channels: int = 3, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, crop_pct: float | None = None) -> Callable:
    """Deterministic evaluation transform, PIL -> float [C, S, S]: resize, centre crop, normalise.

    The short side is resized to S / crop_pct, then the centre S x S is kept. `crop_pct` defaults to
    0.875 (the ImageNet convention) for S >= 64 and to 1.0 (no crop: keep the whole image) below.
    """
    crop_pct = crop_pct or (0.875 if image_size >= 64 else 1.0)
    return T.Compose([
        ToChannels(channels),
        T.Resize(int(round(image_size / crop_pct)), interpolation=BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        _normalize(channels, mean, std),
    ])


def balanced_subset(targets: Sequence[int], limit: int) -> list[int]:
    """The first `limit // C` indices of each of the C classes (the first `limit % C` classes get one
    more), in index order: a deterministic, class-balanced subset."""
    classes = sorted(set(targets))
    quota = {c: limit // len(classes) + (k < limit % len(classes)) for k, c in enumerate(classes)}
    chosen = []
    for i, t in enumerate(targets):
        if quota[t] > 0:
            chosen.append(i)
            quota[t] -= 1
    return chosen


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST: the original IDX files, parsed with numpy.
# --------------------------------------------------------------------------------------------------
def read_idx(gz_path: Path) -> np.ndarray:
    """Read a gzipped IDX file (LeCun's MNIST format) as a uint8 array, e.g. images [N, 28, 28].

    The file is gunzipped once into the cache (`<cache>/fashion_mnist/`) and read from there. Format:
    2 zero bytes, a type byte (0x08 = uint8), the number of dims, the dims as big-endian int32, data.
    The cache file is keyed by the .gz file's size and modification time: a changed file is unpacked again.
    A damaged file raises DataFileError naming it.
    """
    raw = cache_dir() / "fashion_mnist" / f"{gz_path.name[:-3]}-{file_key(gz_path)}"
    if not raw.exists():
        try:
            with atomic_file(raw) as tmp, gzip.open(gz_path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as e:
            raise DataFileError(f"{gz_path} cannot be gunzipped ({e}): the download is damaged; "
                                f"fetch it again") from None
    head = np.fromfile(raw, dtype=np.uint8, count=4).tolist()
    if len(head) < 4 or head[:3] != [0, 0, 8]:
        raise DataFileError(f"{gz_path} is not a uint8 IDX file (header {head}): expected Fashion-MNIST's "
                            f"original files")
    ndim = head[3]
    dims = np.fromfile(raw, dtype=">i4", count=ndim, offset=4)
    data = np.fromfile(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if len(dims) != ndim or data.size != int(np.prod(dims)):
        raise DataFileError(f"{gz_path} is truncated: its header says {dims.tolist()} ({int(np.prod(dims))} bytes), "
                            f"it holds {data.size}; fetch it again")
    return data.reshape(*dims)


def file_key(path: Path) -> str:
    """A cache key for a file's content: its size and modification time (ns), cheap even for large archives."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


class FashionMNIST(Dataset):
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 grayscale images, 10 classes.

    Item: dict(source=transform(PIL image) (default: float [1, 28, 28] in [0, 1]), label=int).
    `limit=N` keeps the first N images (deterministic; roughly class-balanced, the files are shuffled).
    """

    URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",  # of the original .gz files
           "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
           "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
           "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    def __init__(self, split: str = "train", root: str | Path | None = None, transform: Callable | None = None,
                 limit: int | None = None, download: bool | None = None):
        if split not in self.FILES:
            raise ValueError(f"FashionMNIST split must be 'train' or 'test', not {split!r}")
        paths = [ensure(f"fashion_mnist/{name}", root, download) for name in self.FILES[split]]
        self.images, labels = read_idx(paths[0])[:limit], read_idx(paths[1])[:limit]  # [N, 28, 28], [N]
        self.targets = labels.astype(np.int64).tolist()
        self.transform = transform or T.ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.transform(Image.fromarray(self.images[i])), label=self.targets[i])


# --------------------------------------------------------------------------------------------------
# Folders of images (ImageNet layout `<root>/<class>/*.jpg`) and CIFAR-10's JPEG archive.
# --------------------------------------------------------------------------------------------------
class _LabelledImages(Dataset):
    """Wrap a torchvision data set of (PIL image, int) with `.classes`/`.targets` into dict items."""

    def __init__(self, base: Dataset, transform: Callable | None, limit: int | None):
        self.base, self.classes = base, base.classes
        self.transform = transform or T.ToTensor()
        targets = list(base.targets)
        self.indices = balanced_subset(targets, limit) if limit else list(range(len(targets)))
        self.targets = [targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        try:
            image, label = self.base[j]
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated data
            if isinstance(e, DataFileError):
                raise
            samples = getattr(self.base, "samples", None)
            name = samples[j][0] if samples else f"image {j}"
            raise DataFileError(f"cannot decode {name} ({e}): replace the file, or pass --skip-bad-files "
                                f"(SkipBadItems) to skip unreadable files") from None
        return dict(source=self.transform(image), label=label)


class ImageFolderDataset(_LabelledImages):
    """`<root>/<class>/<image>` folders (ImageNet layout); classes sorted by name.

    Item: dict(source=transform(RGB PIL image) (default: float [3, H, W] in [0, 1]), label=int).
    `limit=N` keeps a deterministic class-balanced subset (the first N / C files of each class).
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, limit: int | None = None):
        super().__init__(torchvision.datasets.ImageFolder(str(root)), transform, limit)


class PackedJPEGs(Dataset):
    """(RGB PIL image, label) pairs from one split of a `<split>/<class>/<file>.jpg` tar archive.

    The first use reads the archive once and packs each split into one cache file,
    `<cache>/<name>/<key>/<split>.npz` (key: the archive's size and modification time, so a changed
    archive is packed again): `blob` (all JPEG bytes concatenated), `offsets` [N + 1] (image i is
    blob[offsets[i]:offsets[i+1]]), `labels` [N], `classes`, `names` [N] (the archive members).
    Images are sorted by (class, file name), the order `ImageFolder` uses, and decoded on access. One
    packed file instead of 60,000 small ones: unpacking CIFAR-10 file by file took 13-70 s on a busy
    2-core machine, packing takes ~3 s.
    """

    def __init__(self, archive: Path, split: str, name: str):
        path = cache_dir() / name / file_key(archive) / f"{split}.npz"
        if not path.exists():
            self.pack(archive, path.parent)
        if not path.exists():
            raise DataFileError(f"{archive} has no {split}/ images: expected members <split>/<class>/<file>.jpg")
        self.archive = archive
        with np.load(path) as f:
            self.blob, self.offsets, self.names = f["blob"], f["offsets"], f["names"].tolist()
            self.targets, self.classes = f["labels"].tolist(), f["classes"].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        jpeg = self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()
        try:
            return Image.open(io.BytesIO(jpeg)).convert("RGB"), self.targets[i]
        except (OSError, ValueError, SyntaxError) as e:
            raise DataFileError(f"cannot decode {self.names[i]} in {self.archive} ({e}): the archive is damaged; "
                                f"fetch it again, or pass --skip-bad-files (SkipBadItems)") from None

    @staticmethod
    def pack(archive: Path, folder: Path) -> None:
        splits: dict[str, list[tuple[str, str, bytes]]] = {}
        try:
            with tarfile.open(archive) as tar:
                for member in tar:  # one streaming pass over the gzip stream
                    if member.isfile() and member.name.endswith(".jpg"):
                        parts = member.name.removeprefix("./").split("/")
                        if len(parts) != 3:
                            raise DataFileError(f"{archive}: member {member.name} is not <split>/<class>/<file>.jpg "
                                                f"(the layout this loader reads)")
                        split, cls, file = parts
                        splits.setdefault(split, []).append((cls, file, tar.extractfile(member).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFileError(f"{archive} cannot be read as a tar archive ({e}): fetch it again") from None
        for split, files in splits.items():
            files.sort()
            classes = sorted({cls for cls, _, _ in files})
            sizes = np.array([len(jpeg) for _, _, jpeg in files])
            with atomic_file(folder / f"{split}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, blob=np.frombuffer(b"".join(jpeg for _, _, jpeg in files), dtype=np.uint8),
                         offsets=np.concatenate([[0], np.cumsum(sizes)]),
                         labels=np.array([classes.index(cls) for cls, _, _ in files]), classes=np.array(classes),
                         names=np.array([f"{split}/{cls}/{file}" for cls, file, _ in files]))


class CIFAR10(_LabelledImages):
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes (airplane ... truck).

    It reads the mirror's `cifar10/cifar10_jpg.tar.gz` (a JPEG re-encoding of the originals) through
    `PackedJPEGs`, which caches it under `<cache>/cifar10/` (the data root stays untouched). Without that
    archive it reads the original python pickles in `cifar10/cifar-10-batches-py/` with torchvision's
    `CIFAR10`; the class order is the same. A missing set is downloaded (unless D2V_DOWNLOAD=never /
    download=False): the archive from D2V_MIRROR_URL when set, else the original pickles.
    Item: dict(source=transform(RGB PIL image) (default: float [3, 32, 32] in [0, 1]), label=int);
    `limit=N`: a deterministic class-balanced subset (the first N / C images of each class).
    """

    def __init__(self, split: str = "train", root: str | Path | None = None, transform: Callable | None = None,
                 limit: int | None = None, download: bool | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR10 split must be 'train' or 'test', not {split!r}")
        path = ensure("cifar10/cifar10_jpg.tar.gz", root, download)  # or cifar10/cifar-10-batches-py
        if path.name == "cifar10_jpg.tar.gz":
            base = PackedJPEGs(path, split, "cifar10")
        else:
            base = torchvision.datasets.CIFAR10(str(path.parent), train=split == "train", download=False)
        super().__init__(base, transform, limit)


__all__ = ["pretrain_transform", "eval_transform", "FashionMNIST", "CIFAR10", "ImageFolderDataset",
           "PackedJPEGs", "balanced_subset", "read_idx", "STATS", "IMAGENET_MEAN", "IMAGENET_STD"]
