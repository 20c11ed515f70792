"""Weights out of a TorchScript archive (openai/CLIP's released `.pt` files) without running its code.

`torch.jit.save` writes a zip: `<root>/data.pkl` pickles the module tree (objects of classes named
`__torch__.<module path>.<Class>`, each with a dict of its attributes), `<root>/data/<key>` holds the
raw bytes of each tensor storage and `<root>/code/` the TorchScript source. `torch.jit.load` would
compile and run that code; `torch.load(weights_only=True)` refuses the `__torch__` classes.

Here a restricted unpickler reads data.pkl alone. It resolves only three kinds of names: the
`__torch__.*` classes (as empty placeholders that just keep their attribute dict), torch's tensor
rebuild functions with the storage type names, `collections.OrderedDict` and TorchScript's list
type tags (identities). Anything else, such
as a call to `os.system`, is refused before it can run. Tensors attached anywhere in the module
tree are returned under their dotted path, which is the module's `state_dict()` naming.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import torch

from .errors import CLIPMoEError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
# TorchScript tags typed lists and containers with these (torch.jit._pickle); each just returns its
# first argument, so an identity stands in for it.
_TYPE_TAGS = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"}


def _untagged(value, *_type):
    return value
SAFE_CONVERSION_HINT = (
    "convert it on a machine where you trust the file: `sd = torch.jit.load(path, map_location='cpu').state_dict()`, "
    "then `safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'weights.safetensors')`"
)


class ScriptModulePlaceholder:
    """Stands for one `__torch__.*` object: keeps the attribute dict that BUILD hands over."""

    qualified_name = "__torch__"

    def __setstate__(self, state):
        self.state = state


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.path = archive, root, path
        self.placeholders: dict[str, type] = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.placeholders:
                self.placeholders[qualified] = type(name, (ScriptModulePlaceholder,), {"qualified_name": qualified})
            return self.placeholders[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in _TYPE_TAGS:
            return _untagged
        if (module, name) in _REBUILDERS:
            return _REBUILDERS[(module, name)]
        raise CLIPMoEError(f"{self.path}: refused to read: its data.pkl calls {module}.{name}, which is not part of a "
                           f"TorchScript module's weights (nothing was run); {SAFE_CONVERSION_HINT}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CLIPMoEError(f"{self.path}: data.pkl refers to {pid!r}, not a tensor storage of the archive")
        _, storage_type, key, _location, numel = pid
        try:
            raw = self.archive.read(f"{self.root}/data/{key}")
        except KeyError:
            raise CLIPMoEError(f"{self.path}: storage {self.root}/data/{key} is missing from the archive") from None
        dtype = storage_type.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * itemsize:
            raise CLIPMoEError(f"{self.path}: storage {self.root}/data/{key} holds {len(raw)} bytes, expected {numel * itemsize}")
        flat = torch.frombuffer(bytearray(raw[:numel * itemsize]), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True)


def archive_root(names: list[str]) -> str | None:
    """The top folder of a TorchScript archive (`<root>/data.pkl` next to `<root>/code/`), else None."""
    roots = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    for root in sorted(roots):
        if any(n.startswith(f"{root}/code/") for n in names) and f"{root}/constants.pkl" in names:
            return root
    return None


def is_torchscript_archive(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return archive_root(archive.namelist()) is not None


def read_torchscript_state_dict(path) -> dict[str, torch.Tensor]:
    """name -> tensor of every tensor in a TorchScript archive's module tree (its state_dict), read
    without compiling or running any of its code."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = archive_root(names)
            if root is None:
                raise CLIPMoEError(f"{path}: not a TorchScript archive (no <root>/data.pkl beside <root>/code/)")
            if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() != b"little":
                raise CLIPMoEError(f"{path}: written on a big-endian machine; {SAFE_CONVERSION_HINT}")
            unpickler = _ArchiveUnpickler(archive.read(f"{root}/data.pkl"), archive, root, path)
            try:
                tree = unpickler.load()
            except CLIPMoEError:
                raise
            except Exception as err:  # noqa: BLE001  a truncated or odd pickle: name it, no traceback
                raise CLIPMoEError(f"{path}: cannot read {root}/data.pkl ({type(err).__name__}: {err}); {SAFE_CONVERSION_HINT}") from None
    except zipfile.BadZipFile as err:
        raise CLIPMoEError(f"{path}: not a readable zip archive ({err})") from None
    if not isinstance(tree, ScriptModulePlaceholder):
        raise CLIPMoEError(f"{path}: {root}/data.pkl holds a {type(tree).__name__}, not a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _collect(tree, "", out, path)
    if not out:
        raise CLIPMoEError(f"{path}: the TorchScript module holds no tensors")
    return out


def _collect(node: ScriptModulePlaceholder, prefix: str, out: dict, path: str) -> None:
    state = getattr(node, "state", None)
    if not isinstance(state, dict):
        raise CLIPMoEError(f"{path}: {node.qualified_name} stores its state as a {type(state).__name__} (custom "
                           f"__getstate__), not as attributes; {SAFE_CONVERSION_HINT}")
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()  # stored parameters come back requiring grad
        elif isinstance(value, ScriptModulePlaceholder):
            _collect(value, f"{prefix}{name}.", out, path)


def load_archive_into(model: torch.nn.Module, path) -> None:
    """Load a TorchScript archive's weights into an equivalent eager model (an open_clip CLIP for
    openai/CLIP's .pt). Tensors the eager model does not keep in its state_dict (openai/CLIP's
    input_resolution / context_length / vocab_size, open_clip's non-persistent attn_mask) are
    dropped; every tensor the model needs must be there with its shape."""
    weights = read_torchscript_state_dict(path)
    own = model.state_dict()
    for key, value in own.items():
        if key not in weights:
            raise CLIPMoEError(f"{path}: tensor {key!r} is missing; the archive is not this model")
        if weights[key].shape != value.shape:
            raise CLIPMoEError(f"{path}: tensor {key!r} has shape {list(weights[key].shape)}, the model expects {list(value.shape)}")
    model.load_state_dict({key: weights[key] for key in own})
