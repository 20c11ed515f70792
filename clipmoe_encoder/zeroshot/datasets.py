"""Readers for the standard zero-shot benchmark files, with one clear error for bad input.

Retrieval readers return `(image_paths, captions_per_image)`: caption list i belongs to image i.
Classification readers return `(images, labels, classnames)`: `images` is a list of paths or, for
CIFAR, an `ArrayImages` sequence. Every image file is checked to exist while reading (cheap) but
only decoded when encoded, batch by batch (`load_image`), so large sets never sit in memory.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Sequence

import numpy as np

from ..errors import CLIPMoEError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ---------------------------------------------------------------------------------------------
# images


def load_image(item):
    """A PIL image (RGB) from a PIL image, a path or an HxWx3 / HxW uint8 array. A file that is
    missing or cannot be decoded raises CLIPMoEError naming it (never PIL's own traceback)."""
    from PIL import Image

    from ..images import DECODE_ERRORS, decode_rgb

    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    elif isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            return decode_rgb(path)
        except FileNotFoundError:
            raise CLIPMoEError(f"{path}: image file not found") from None
        except DECODE_ERRORS as err:
            raise CLIPMoEError(f"{path}: cannot decode the image ({err})") from None
    else:
        raise CLIPMoEError(f"cannot read an image from a {type(item).__name__}: expected a PIL image, a path or an array")
    return image if image.mode == "RGB" else image.convert("RGB")


class ArrayImages(Sequence):
    """An (N, H, W, 3) uint8 array seen as a sequence of images (used for CIFAR)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        return self.array[i]


def _check_images(paths: list[str], source: str, where: list[str]) -> None:
    for path, place in zip(paths, where):
        if not os.path.isfile(path):
            raise CLIPMoEError(f"{source}: {place}: image {path} does not exist")


# ---------------------------------------------------------------------------------------------
# retrieval


def read_text_file(path, what: str) -> str:
    """The text of a UTF-8 file; a missing file, a directory or other bytes are one error naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CLIPMoEError(f"{path}: {'is a directory' if os.path.isdir(path) else 'no such file'}, expected the {what} file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CLIPMoEError(f"{path}: line {line}: not UTF-8 text ({err.reason}); the {what} file must be UTF-8") from None


def _read_json(path, what):
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CLIPMoEError(f"{path}: not valid JSON ({err})") from None


def _field(entry, key, path, where, kind=None):
    if not isinstance(entry, dict) or key not in entry:
        raise CLIPMoEError(f"{path}: {where}: missing field {key!r}")
    value = entry[key]
    if kind is not None and not isinstance(value, kind):
        raise CLIPMoEError(f"{path}: {where}: field {key!r} is a {type(value).__name__}, expected {kind.__name__}")
    return value


def _caption(text: str, path, where: str) -> str:
    """A caption stripped of surrounding spaces; one of only spaces would be encoded as a text, so it is an error."""
    text = text.strip()
    if not text:
        raise CLIPMoEError(f"{path}: {where}: caption is empty or only spaces")
    return text


def _require_dir(root, what):
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise CLIPMoEError(f"{root}: no such directory ({what})")
    return root


def read_karpathy(json_path, image_root, split="test", captions_per_image: int | None = 5):
    """Karpathy's `dataset_coco.json` / `dataset_flickr30k.json`: the images of `split` ("test",
    "val", "train", "restval") with the "raw" text of their sentences. COCO entries carry a
    "filepath" ("val2014"): the image is looked up under image_root/filepath/filename and, failing
    that, image_root/filename, so either the COCO root or the val2014 folder can be given.
    A few COCO images have 6 or 7 captions; the standard 5k/25k protocol keeps the first 5
    (`captions_per_image=None` keeps all)."""
    data = _read_json(json_path, "Karpathy split JSON")
    root = _require_dir(image_root, "image folder")
    images = _field(data, "images", json_path, "top level", list)
    paths, captions, where = [], [], []
    for i, entry in enumerate(images):
        place = f"images[{i}]"
        if _field(entry, "split", json_path, place, str) != split:
            continue
        filename = _field(entry, "filename", json_path, place, str)
        sentences = _field(entry, "sentences", json_path, place, list)
        texts = [_caption(_field(s, "raw", json_path, f"{place}.sentences[{j}]", str), json_path, f"{place}.sentences[{j}]")
                 for j, s in enumerate(sentences)]
        if not texts:
            raise CLIPMoEError(f"{json_path}: {place}: 'sentences' is empty")
        path = os.path.join(root, entry.get("filepath") or "", filename)
        if entry.get("filepath") and not os.path.isfile(path) and os.path.isfile(os.path.join(root, filename)):
            path = os.path.join(root, filename)
        paths.append(path)
        captions.append(texts[:captions_per_image] if captions_per_image else texts)
        where.append(place)
    if not paths:
        raise CLIPMoEError(f"{json_path}: no images with split {split!r}")
    _check_images(paths, os.fspath(json_path), where)
    return paths, captions


def read_coco_captions(annotation_json, image_root, captions_per_image: int | None = 5):
    """COCO `captions_val2017.json` (or any COCO captions file): images in the file's order, each
    with its first `captions_per_image` captions in annotation order (the paper's 5k-image
    protocol). Images without any caption are left out (they have nothing to retrieve)."""
    data = _read_json(annotation_json, "COCO captions annotation")
    root = _require_dir(image_root, "image folder")
    images = _field(data, "images", annotation_json, "top level", list)
    annotations = _field(data, "annotations", annotation_json, "top level", list)
    by_id, order = {}, []
    for i, entry in enumerate(images):
        image_id = _field(entry, "id", annotation_json, f"images[{i}]")
        by_id[image_id] = (_field(entry, "file_name", annotation_json, f"images[{i}]", str), [], f"images[{i}]")
        order.append(image_id)
    for i, ann in enumerate(annotations):
        image_id = _field(ann, "image_id", annotation_json, f"annotations[{i}]")
        caption = _caption(_field(ann, "caption", annotation_json, f"annotations[{i}]", str), annotation_json, f"annotations[{i}]")
        if image_id not in by_id:
            raise CLIPMoEError(f"{annotation_json}: annotations[{i}]: image_id {image_id!r} is not in 'images'")
        by_id[image_id][1].append(caption)
    paths, captions, where = [], [], []
    for image_id in order:
        file_name, texts, place = by_id[image_id]
        if texts:
            paths.append(os.path.join(root, file_name))
            captions.append(texts[:captions_per_image] if captions_per_image else texts)
            where.append(place)
    if not paths:
        raise CLIPMoEError(f"{annotation_json}: no image has a caption")
    _check_images(paths, os.fspath(annotation_json), where)
    return paths, captions


_TOKEN_LINE = re.compile(r"^(?P<image>[^#\t]+)#(?P<index>\d+)\t(?P<caption>.*)$")


def read_flickr_token(token_file, image_root):
    """Flickr30k `results_20130124.token` (`1000092795.jpg#0<TAB>caption` per line): every image
    with its captions in caption-index order; the paper's full 31,783-image protocol."""
    token_file = os.fspath(token_file)
    text = read_text_file(token_file, "Flickr30k token")
    root = _require_dir(image_root, "image folder")
    grouped: dict[str, list[tuple[int, str]]] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        m = _TOKEN_LINE.match(line)
        if m is None:
            raise CLIPMoEError(f"{token_file}: line {number}: expected '<image>.jpg#<n><TAB><caption>', got {line[:80]!r}")
        grouped.setdefault(m["image"].strip(), []).append((int(m["index"]), _caption(m["caption"], token_file, f"line {number}")))
    if not grouped:
        raise CLIPMoEError(f"{token_file}: no captions")
    paths = [os.path.join(root, name) for name in grouped]
    captions = [[c for _, c in sorted(items, key=lambda t: t[0])] for items in grouped.values()]
    _check_images(paths, token_file, [f"image {name}" for name in grouped])
    return paths, captions


def read_image_text_json(path, image_root=None, skip_bad: bool = False):
    """Image-caption data in any format DMU trains on (ShareGPT4V / LLaVA JSON, a JSON list or JSONL of
    {"image", "caption" | "captions"}, an img2dataset folder), read by DMU's own reader; records naming
    the same image are merged into one row with all its captions. Relative image paths resolve
    against image_root, else DMU's default (the data file's folder or its parent). Returns (image paths, captions per image, report)."""
    from ..dmu.data import load_records

    records, report = load_records(path, image_root, skip_bad=skip_bad)
    merged: dict[str, list[str]] = {}
    for record in records:
        merged.setdefault(record.image, []).append(record.caption)
    return list(merged), list(merged.values()), report


# ---------------------------------------------------------------------------------------------
# classification


def read_class_folder(root):
    """A folder per class (ImageNet's `val/<wnid>/*.JPEG`, torchvision ImageFolder layout): class i
    is the i-th sub-folder in sorted order; images are found recursively by extension. The class
    names are the folder names (use `load_classnames` to replace them)."""
    root = _require_dir(root, "class-folder dataset")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise CLIPMoEError(f"{root}: no class sub-folders (expected <root>/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise CLIPMoEError(f"{os.path.join(root, name)}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += found
        labels += [label] * len(found)
    return paths, labels, classes


def folder_classnames(folders: list[str]) -> list[str]:
    """Readable prompts from folder names: "golden_retriever" -> "golden retriever"."""
    return [name.replace("_", " ") for name in folders]


def load_classnames(path, folders: list[str]) -> list[str]:
    """Class names for `folders` (sorted class-folder order) from a file: one name per line in
    that order, a JSON list in that order, or a JSON object {folder: name} covering every folder."""
    path = os.fspath(path)
    text = read_text_file(path, "class-names")
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CLIPMoEError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            missing = [d for d in folders if d not in data]
            if missing:
                raise CLIPMoEError(f"{path}: no name for class folder {missing[0]!r} ({len(missing)} missing)")
            names = [data[d] for d in folders]
        elif isinstance(data, list):
            names = data
        else:
            raise CLIPMoEError(f"{path}: expected a JSON list of names or an object {{folder: name}}")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(folders):
        raise CLIPMoEError(f"{path}: {len(names)} class names for {len(folders)} class folders")
    bad = next((i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()), None)
    if bad is not None:
        raise CLIPMoEError(f"{path}: class name {bad} ({folders[bad]!r}) is empty or not a string")
    return [n.strip() for n in names]


# CIFAR: the authors' python pickles. They hold only dicts, lists, byte strings and numpy arrays,
# so the unpickler below resolves nothing but the numpy array/dtype constructors: a tampered file
# that names any other callable (os.system, ...) is refused instead of run.
_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "data": "test_batch", "meta": "batches.meta",
                "labels": b"labels", "names": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "data": "test", "meta": "meta",
                 "labels": b"fine_labels", "names": b"fine_label_names"},
}
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1") (a re-saved
    # copy of the authors' Python 2 files); it only converts text to bytes.
    ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_pickle(path):
    if not os.path.isfile(path):
        raise CLIPMoEError(f"{path}: no such file (CIFAR python batch)")
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise CLIPMoEError(f"{path}: refused to unpickle: not a plain CIFAR batch ({err})") from None
    except Exception as err:  # noqa: BLE001  truncated / not a pickle at all
        raise CLIPMoEError(f"{path}: not a readable CIFAR python batch ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CLIPMoEError(f"{path}: expected a dict, found a {type(obj).__name__}")
    return obj


def _get(obj, key: bytes, path):
    # the authors' files have bytes keys (Python 2 pickles); re-saved copies may use str keys
    for k in (key, key.decode()):
        if k in obj:
            return obj[k]
    raise CLIPMoEError(f"{path}: missing field {key.decode()!r}")


def read_cifar(root, which="cifar10"):
    """CIFAR-10 / CIFAR-100 test set from the python batches (`cifar-10-batches-py/test_batch` +
    `batches.meta`, or `cifar-100-python/test` + `meta`, fine labels). `root` is that folder or
    its parent. Returns (ArrayImages of 32x32x3 uint8, labels, class names with '_' -> ' ')."""
    if which not in _CIFAR:
        raise CLIPMoEError(f"unknown CIFAR variant {which!r}: expected 'cifar10' or 'cifar100'")
    spec = _CIFAR[which]
    root = _require_dir(root, which)
    if os.path.isdir(os.path.join(root, spec["folder"])):
        root = os.path.join(root, spec["folder"])
    data_path, meta_path = os.path.join(root, spec["data"]), os.path.join(root, spec["meta"])
    if not os.path.isfile(data_path):
        raise CLIPMoEError(
            f"{data_path}: no such file; {which} is read from the python batches, "
            f"<root>/{spec['folder']}/{spec['data']} or <root>/{spec['data']}"
        )
    batch = _load_cifar_pickle(data_path)
    meta = _load_cifar_pickle(meta_path)
    data = np.asarray(_get(batch, b"data", data_path))
    labels = [int(x) for x in _get(batch, spec["labels"], data_path)]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, spec["names"], meta_path)]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CLIPMoEError(f"{data_path}: field 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
    if len(labels) != len(data):
        raise CLIPMoEError(f"{data_path}: {len(labels)} labels for {len(data)} images")
    if labels and not 0 <= min(labels) <= max(labels) < len(names):
        raise CLIPMoEError(f"{data_path}: labels run {min(labels)}..{max(labels)} but {meta_path} names {len(names)} classes")
    # rows are channel-major (1024 red, 1024 green, 1024 blue values, each row-major 32x32)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ArrayImages(np.ascontiguousarray(images)), labels, [n.replace("_", " ") for n in names]
