"""Read a PyTorch checkpoint in the legacy (pre-1.6, not zip) format without torch, and write
safetensors. Standard library only.

The legacy layout is five pickles and then raw storage data: magic number, protocol version,
sys_info, the object itself (storages appear as persistent ids
('storage', storage_type, key, location, numel[, view_metadata])), the list of storage keys,
then for each key in that order an 8-byte little-endian element count and the raw data.

The file comes from the internet, so the unpickler resolves only the few globals a state dict
needs (an ordered dict, the tensor rebuild functions and the storage types), each to an inert
stand-in, and refuses every other global: nothing in the file can make it run code.

    python3 models/torch_legacy.py IN.pt OUT.safetensors [--key model_state]
"""
import json, pickle, struct, sys

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

# storage type -> (safetensors dtype, bytes per element)
STORAGE_TYPES = {
    "DoubleStorage": ("F64", 8), "FloatStorage": ("F32", 4), "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}
SUPPORTED_DTYPES = {"F32"}  # what convert() writes; anything else in the state dict is refused


class LegacyFormatError(ValueError):
    pass


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype, self.itemsize = STORAGE_TYPES[name]


class _Storage:
    """A storage as named in the pickle; its bytes are filled in after the main pickle."""

    def __init__(self, stype, key, location, numel):
        self.stype, self.key, self.location, self.numel = stype, key, location, numel
        self.data = None  # bytes, once read


class _View:
    """A legacy storage view: `size` elements of `base` from element `offset`."""

    def __init__(self, base, offset, size):
        self.base, self.offset, self.size = base, offset, size
        self.stype = base.stype


class _Tensor:
    def __init__(self, storage, storage_offset, size, stride):
        self.storage, self.storage_offset = storage, storage_offset
        self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # _rebuild_tensor_v2 adds requires_grad, backward_hooks (and later metadata): ignored.
    if not isinstance(storage, (_Storage, _View)):
        raise LegacyFormatError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _Tensor(storage, storage_offset, size, stride)


class _OrderedDict(dict):
    """collections.OrderedDict stand-in (dicts keep order); BUILD may attach `_metadata`."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages  # key -> _Storage, shared across the file

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return _OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(name)
        raise LegacyFormatError(f"refusing global {module}.{name} in the checkpoint (only state-dict "
                                "tensors are supported)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise LegacyFormatError(f"unexpected persistent id {pid!r:.80}")
        stype, key, location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(stype, _StorageType):
            raise LegacyFormatError(f"storage {key!r}: type {stype!r:.60} is not a storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise LegacyFormatError(f"malformed storage id {pid!r:.80}")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(stype, key, location, numel)
        elif st.stype.name != stype.name or st.numel != numel:
            raise LegacyFormatError(f"storage {key!r} declared twice with different type or size")
        if view is None:
            return st
        view_key, offset, size = view
        if not (isinstance(offset, int) and isinstance(size, int) and 0 <= offset and offset + size <= numel):
            raise LegacyFormatError(f"storage view {view_key!r} out of range of {key!r}")
        return _View(st, offset, size)


class _PlainUnpickler(pickle.Unpickler):
    """For the small header pickles, which hold only plain data: no globals at all."""

    def find_class(self, module, name):
        raise LegacyFormatError(f"refusing global {module}.{name} in the header")

    def persistent_load(self, pid):
        raise LegacyFormatError("persistent id in the header")


def _load_simple(f):
    return _PlainUnpickler(f).load()


def load(path):
    """The whole checkpoint object, with tensors as _Tensor stand-ins whose storages hold bytes."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise LegacyFormatError(f"{path}: a zip (PyTorch >= 1.6) checkpoint, not the legacy format")
        f.seek(0)
        if _load_simple(f) != MAGIC:
            raise LegacyFormatError(f"{path}: not a legacy PyTorch file (bad magic number)")
        if _load_simple(f) != PROTOCOL:
            raise LegacyFormatError(f"{path}: unsupported legacy protocol version")
        info = _load_simple(f)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise LegacyFormatError(f"{path}: saved on a big-endian machine (unsupported)")
        storages = {}
        obj = _Unpickler(f, storages).load()
        keys = _load_simple(f)
        if not isinstance(keys, list) or sorted(keys) != sorted(storages) or len(set(keys)) != len(keys):
            raise LegacyFormatError(f"{path}: the storage key list does not match the storages used")
        for key in keys:
            st = storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise LegacyFormatError(f"{path}: file ends before storage {key!r}")
            (count,) = struct.unpack("<q", head)
            if count != st.numel:
                raise LegacyFormatError(f"{path}: storage {key!r} holds {count} elements, the pickle says {st.numel}")
            nbytes = count * st.stype.itemsize
            st.data = f.read(nbytes)
            if len(st.data) != nbytes:
                raise LegacyFormatError(f"{path}: file ends inside storage {key!r}")
        if f.read(1):
            raise LegacyFormatError(f"{path}: unexpected bytes after the last storage")
    return obj


def _tensor_bytes(name, t):
    """(dtype, shape, bytes) of a contiguous tensor; refuses anything else."""
    st, base = t.storage, 0
    if isinstance(st, _View):
        st, base = st.base, st.offset
        limit = t.storage.size
    else:
        limit = st.numel
    dtype, itemsize = st.stype.dtype, st.stype.itemsize
    if dtype not in SUPPORTED_DTYPES:
        raise LegacyFormatError(f"{name}: {st.stype.name} tensors are not supported (only float32)")
    shape = list(t.size)
    if len(t.stride) != len(shape) or any(not isinstance(x, int) or x < 0 for x in shape + list(t.stride)):
        raise LegacyFormatError(f"{name}: malformed size {t.size} / stride {t.stride}")
    numel = 1
    for d in shape:
        numel *= d
    expected, acc = [], 1
    for d in reversed(shape):
        expected.append(acc)
        acc *= d
    expected.reverse()
    # Strides of size-1 dimensions do not matter.
    if any(s != e for s, e, d in zip(t.stride, expected, shape) if d != 1):
        raise LegacyFormatError(f"{name}: not contiguous (size {t.size}, stride {t.stride}); "
                                "non-contiguous tensors are not supported")
    off = t.storage_offset
    if not isinstance(off, int) or off < 0 or off + numel > limit:
        raise LegacyFormatError(f"{name}: elements {off}..{off + numel} lie outside its storage of {limit}")
    begin = (base + off) * itemsize
    return dtype, shape, st.data[begin:begin + numel * itemsize]


def read_state_dict(path, key="model_state"):
    """{name: (dtype, shape, bytes)} for the tensors of checkpoint[key] (key None: the top level)."""
    obj = load(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise LegacyFormatError(f"{path}: no {key!r} in the checkpoint")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise LegacyFormatError(f"{path}: {key!r} is not a state dict")
    out = {}
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, _Tensor):
            raise LegacyFormatError(f"{path}: entry {name!r:.60} of {key!r} is not a tensor")
        out[name] = _tensor_bytes(name, t)
    return out


def write_safetensors(path, tensors):
    """Write {name: (dtype, shape, bytes)} as safetensors, names sorted, header padded with spaces
    to a multiple of 8 bytes: the same tensors always give the same bytes."""
    header, offset = {}, 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def convert(src, dst, key="model_state"):
    tensors = read_state_dict(src, key)
    write_safetensors(dst, tensors)
    return tensors


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--key", default="model_state")
    a = ap.parse_args()
    for name, (dtype, shape, _) in sorted(convert(a.src, a.dst, a.key).items()):
        print(f"{name}\t{dtype}\t{shape}")
