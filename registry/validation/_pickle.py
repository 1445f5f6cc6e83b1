"""Static walk of pickle and joblib streams: which globals would loading import?

Loading a pickle runs whatever callables it names, so the only safe way to judge one is to
read its opcodes without executing them. A plain linear opcode scan (what picklescan does)
is not enough for joblib files: joblib writes each numpy array's raw bytes *inside* the
pickle stream, right after a ``NumpyArrayWrapper`` is built, and its unpickler skips them.
A linear scan either stops at the first array (missing every global after it) or, worse,
can be steered by crafted "array bytes" into reading different opcodes than joblib runs.

So this module mirrors ``joblib.load`` (``pickle._Unpickler`` + joblib's ``load_build``):
a symbolic stack machine that executes nothing, follows protocol-4 framing exactly like
the pure-Python unpickler, and skips array payloads exactly like joblib. Anything it
cannot follow with certainty is reported as a problem, never guessed.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import lzma
import pickle
import pickletools
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

import numpy as np

from registry.modelkit.allowlist import canonical_name

# Compressed joblib files start with the magic of their compressor; the prefixes are the
# ones joblib itself checks (joblib/compressor.py), so we open exactly what it would open.
_JOBLIB_COMPRESSORS: tuple[tuple[str, bytes], ...] = (
    ("zlib", b"\x78"),
    ("gzip", b"\x1f\x8b"),
    ("bz2", b"BZ"),
    ("lzma", b"\x5d\x00"),
    ("xz", b"\xfd\x37\x7a\x58\x5a"),
    ("lz4", b"\x04\x22\x4d\x18"),
)
# joblib < 0.10 wrote arrays into companion files next to the pickle; never followed.
_JOBLIB_LEGACY_PREFIX = b"ZF"

JOBLIB_ARRAY_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_ARRAY_WRAPPER_NAMES = {"NumpyArrayWrapper", "NDArrayWrapper", "ZNDArrayWrapper"}
NUMPY_DTYPE = ("numpy", "dtype")

# Bounds that keep a hostile file from exhausting the scanning (web) process.
MAX_STREAM_BYTES = 4 * 1024**3  # decompressed pickle stream
MAX_VALUE_BYTES = 256 * 1024**2  # one bytes/str value or frame held in memory
MAX_LINE_BYTES = 1024**2  # one newline-terminated protocol-0 argument
# A crafted stream can cost far more memory and time per byte than a real model: these
# bound the opcodes run, the values held at once, and the dict entries kept for inspection.
MAX_OPCODES = 20_000_000
MAX_HELD_VALUES = 2_000_000
MAX_DICT_ENTRIES = 4096
_SKIP_CHUNK = 1024**2


class PickleStructureError(ValueError):
    """The stream is not a complete, well-formed pickle (truncated, corrupt, not a pickle).

    ``walk`` holds what was found before the error (set by walk_pickle).
    """

    walk: PickleWalk | None = None


class _ScanLimitError(PickleStructureError):
    """The stream exceeds a size bound of the scanner."""


@dataclass
class PickleWalk:
    """What a walk found. ``problems`` are reasons the walk cannot vouch for the stream."""

    protocol: int = 0
    # (module, name) exactly as the unpickler would resolve them, in order of first use.
    globals: list[tuple[str, str]] = field(default_factory=list)
    # Where each global is first named: the opcode's offset in the (decompressed) stream.
    offsets: dict[tuple[str, str], int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    joblib_arrays: int = 0
    stream_bytes: int = 0
    opcodes: int = 0


def joblib_compression(head: bytes) -> str | None:
    """Name of the joblib compressor whose magic ``head`` starts with, if any."""
    for name, prefix in _JOBLIB_COMPRESSORS:
        if head.startswith(prefix):
            return name
    return None


class ByteStream(Protocol):
    """What a walk reads: a binary file, a BytesIO, or a decompressing reader over one."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class _OwnedByteStream(ByteStream, Protocol):
    """A decompressing reader over an open file, closed when the walk is done."""

    def __enter__(self) -> ByteStream: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> object: ...


@contextlib.contextmanager
def open_pickle_stream(path: Path) -> Iterator[tuple[ByteStream, str | None]]:
    """Open the (decompressed) pickle stream of a pickle/joblib file, and its compressor."""
    with open(path, "rb") as raw:
        head = raw.read(8)
        raw.seek(0)
        if head.startswith(_JOBLIB_LEGACY_PREFIX):
            raise PickleStructureError(
                "file uses the joblib < 0.10 format, which stores arrays in companion "
                "files; re-save the model with a current joblib"
            )
        compression = joblib_compression(head)
        if compression is None:
            yield raw, None
            return
        with _decompressor(raw, compression) as stream:
            yield stream, compression


def _decompressor(raw: BinaryIO, compression: str) -> _OwnedByteStream:
    if compression in ("zlib", "gzip"):
        # joblib's own readers: its "zlib" is a bare zlib stream, not gzip framing.
        from joblib.compressor import BinaryGzipFile, BinaryZlibFile

        reader_cls = BinaryZlibFile if compression == "zlib" else BinaryGzipFile
        return reader_cls(raw, "rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, "rb")
    if compression in ("lzma", "xz"):
        return lzma.LZMAFile(raw, "rb")
    raise PickleStructureError(
        f"file is {compression}-compressed, which this server cannot decompress; "
        "re-save it uncompressed or with zlib/gzip/bz2/lzma/xz compression"
    )


# --- symbolic values --------------------------------------------------------------------


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(eq=False)
class _Obj:
    """Result of a call or instantiation the real unpickler would perform."""

    callee: Any
    args: Any
    is_wrapper: bool = False
    # Last BUILD state; for joblib array wrappers, the merged instance attributes.
    state: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)


class _Dict(dict):
    """A pickled dict; entries past MAX_DICT_ENTRIES are dropped and ``complete`` cleared."""

    complete = True


class _Container:
    """A list or set: the walk never needs their items, so it does not keep them."""


class _Opaque:
    """A value the walk does not model (an array joblib read, a buffer, ...)."""


# What pickletools.code2op holds; that one is undocumented and absent from typeshed.
_OPCODES = {op.code: op for op in pickletools.opcodes}


# --- framing ----------------------------------------------------------------------------


class _Reader:
    """Reads opcodes like ``pickle._Unframer``; joblib's array reads bypass it via ``raw``."""

    def __init__(self, raw: ByteStream, walk: PickleWalk) -> None:
        self.raw = raw
        self.walk = walk
        self.frame: io.BytesIO | None = None

    def _raw_read(self, n: int) -> bytes:
        if n > MAX_VALUE_BYTES:
            raise _ScanLimitError(
                f"pickle holds a single value of {n} bytes; the scanner's limit is "
                f"{MAX_VALUE_BYTES // 1024**2} MB"
            )
        data = self.raw.read(n)
        self._count(len(data))
        return data

    def _count(self, n: int) -> None:
        self.walk.stream_bytes += n
        if self.walk.stream_bytes > MAX_STREAM_BYTES:
            raise _ScanLimitError(
                f"pickle stream is larger than the scanner's limit of "
                f"{MAX_STREAM_BYTES // 1024**2} MB"
            )

    def read(self, n: int) -> bytes:
        if self.frame is not None:
            data = self.frame.read(n)
            if not data and n != 0:
                self.frame = None
                return self._exact(n)
            if len(data) < n:
                raise PickleStructureError("pickle exhausted before end of frame")
            return data
        return self._exact(n)

    def _exact(self, n: int) -> bytes:
        data = self._raw_read(n)
        if len(data) < n:
            raise PickleStructureError("file ends in the middle of the pickle (truncated?)")
        return data

    def readline(self) -> bytes:
        if self.frame is not None:
            data = self.frame.readline()
            if data:
                if not data.endswith(b"\n"):
                    raise PickleStructureError("pickle exhausted before end of frame")
                return data
            self.frame = None
        data = self.raw.readline(MAX_LINE_BYTES)
        self._count(len(data))
        if not data.endswith(b"\n"):
            raise PickleStructureError("pickle line argument is unterminated or too long")
        return data

    def position(self) -> int:
        """Offset of the next byte the unpickler reads, in the decompressed stream."""
        pending = 0
        if self.frame is not None:
            pending = len(self.frame.getbuffer()) - self.frame.tell()
        return self.walk.stream_bytes - pending

    def load_frame(self, size: int) -> None:
        if self.frame is not None and self.frame.read() != b"":
            raise PickleStructureError("beginning of a new frame before end of current frame")
        self.frame = io.BytesIO(self._exact(size))

    def raw_skip(self, n: int) -> None:
        """Skip bytes read directly from the file (a joblib array payload)."""
        remaining = n
        while remaining:
            chunk = self.raw.read(min(remaining, _SKIP_CHUNK))
            if not chunk:
                raise PickleStructureError("file ends inside a joblib array payload")
            self._count(len(chunk))
            remaining -= len(chunk)


# --- the walk ---------------------------------------------------------------------------

_LITERAL_OPS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def walk_pickle(stream: ByteStream, *, joblib_arrays: bool = True) -> PickleWalk:
    """Walk one pickle from ``stream`` without executing it.

    ``joblib_arrays``: follow joblib's array payloads (True for the stream ``joblib.load``
    reads; joblib's nested pickles for object arrays use a plain unpickler).
    Raises PickleStructureError when the stream is not a well-formed pickle.
    """
    walk = PickleWalk()
    try:
        _Machine(_Reader(stream, walk), walk, joblib_arrays).run()
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        # Decompressors raise these for corrupt or truncated compressed data.
        error = PickleStructureError(f"compressed stream is corrupt: {exc}")
        error.walk = walk
        raise error from exc
    except PickleStructureError as exc:
        exc.walk = walk
        raise
    return walk


class _Machine:
    def __init__(self, reader: _Reader, walk: PickleWalk, joblib_arrays: bool) -> None:
        self.reader = reader
        self.walk = walk
        self.joblib_arrays = joblib_arrays
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[Any, Any] = {}
        self.proto = 0
        self.opcode_offset = 0

    def problem(self, message: str) -> None:
        if message not in self.walk.problems:
            self.walk.problems.append(message)

    # stack helpers: every value leaving the stack goes through _taken(), which is where
    # a joblib array wrapper used anywhere but in its own BUILD is caught.
    def _taken(self, value: Any) -> Any:
        if isinstance(value, _Obj) and value.is_wrapper:
            self.problem(
                "joblib NumpyArrayWrapper is used outside its own BUILD; joblib never "
                "writes that, and the array layout could not be followed"
            )
        return value

    def pop(self) -> Any:
        if not self.stack:
            raise PickleStructureError("pickle stack underflow")
        return self._taken(self.stack.pop())

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise PickleStructureError("pickle refers to a MARK that was never set")
        items = self.stack
        self.stack = self.metastack.pop()
        for item in items:
            self._taken(item)
        return items

    def top(self) -> Any:
        if not self.stack:
            raise PickleStructureError("pickle stack underflow")
        return self.stack[-1]

    def find_class(self, module: str, name: str) -> _Global:
        # The renames pickle applies for protocol 0-2 (fix_imports), applied exactly as the
        # restricted unpicklers apply them (at every protocol: they cannot see it).
        module, name = canonical_name(module, name)
        if (module, name) not in self.walk.offsets:
            self.walk.globals.append((module, name))
            self.walk.offsets[(module, name)] = self.opcode_offset
        if (
            name.rpartition(".")[2] in _ARRAY_WRAPPER_NAMES
            and (module, name) != JOBLIB_ARRAY_WRAPPER
        ):
            # joblib's load_build tests isinstance(), so any alias of its wrapper classes
            # would make it read array bytes the walk does not expect.
            self.problem(f"{module}.{name} names a joblib array wrapper under another path")
        return _Global(module, name)

    def _read_global_args(self, encoding: str) -> tuple[str, str]:
        try:
            module = self.reader.readline()[:-1].decode(encoding)
            name = self.reader.readline()[:-1].decode(encoding)
        except UnicodeDecodeError as exc:
            raise PickleStructureError(f"global name is not valid {encoding}") from exc
        return module, name

    def run(self) -> None:
        read = self.reader.read
        while True:
            self.opcode_offset = self.reader.position()
            code = read(1)
            opcode = _OPCODES.get(code.decode("latin-1"))
            if opcode is None:
                raise PickleStructureError(f"byte {code!r} is not a pickle opcode")
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                # Decoded like the unpickler does, not like pickletools (which unescapes).
                arg: Any = self._read_global_args("utf-8" if name == "GLOBAL" else "ascii")
            elif opcode.arg is not None:
                try:
                    # typeshed asks for IO[bytes]; pickletools' readers call only read/readline.
                    arg = opcode.arg.reader(self.reader)  # type: ignore[arg-type]
                except PickleStructureError:
                    raise
                except (ValueError, UnicodeDecodeError, struct.error) as exc:
                    raise PickleStructureError(f"bad argument to {name}: {exc}") from exc
            else:
                arg = None
            if name == "STOP":
                self.pop()
                self.walk.protocol = max(self.walk.protocol, self.proto)
                return
            self.step(name, arg)
            self._check_bounds()

    def _check_bounds(self) -> None:
        self.walk.opcodes += 1
        if self.walk.opcodes > MAX_OPCODES:
            raise _ScanLimitError(f"pickle has more than {MAX_OPCODES:,} opcodes")
        held = len(self.stack) + len(self.metastack) + len(self.memo)
        if held > MAX_HELD_VALUES:
            raise _ScanLimitError(f"pickle holds more than {MAX_HELD_VALUES:,} values at once")

    def step(self, name: str, arg: Any) -> None:
        if name in _LITERAL_OPS:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name == "PROTO":
            if not 0 <= arg <= pickle.HIGHEST_PROTOCOL:
                raise PickleStructureError(f"unsupported pickle protocol {arg}")
            self.proto = arg
        elif name == "FRAME":
            self.reader.load_frame(arg)
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "POP":
            if self.stack:
                self.pop()
            else:
                self.pop_mark()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.stack.append(self._taken(self.top()))
        elif name == "BYTEARRAY8":
            self.stack.append(bytearray(arg))
        elif name == "NEXT_BUFFER":
            self.problem("pickle refers to out-of-band buffers, which joblib never supplies")
            self.stack.append(_Opaque())
        elif name == "READONLY_BUFFER":
            self.top()
        elif name == "EMPTY_TUPLE":
            self.stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self.pop() for _ in range(int(name[-1]))]
            self.stack.append(tuple(reversed(items)))
        elif name == "TUPLE":
            items = self.pop_mark()
            self.stack.append(tuple(items))
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            self.stack.append(_Container())
        elif name in ("LIST", "FROZENSET"):
            self.pop_mark()
            self.stack.append(_Container())
        elif name == "EMPTY_DICT":
            self.stack.append(_Dict())
        elif name == "DICT":
            items = self.pop_mark()
            self.stack.append(self._setitems(_Dict(), items))
        elif name == "APPEND":
            self.pop()
            self.top()
        elif name in ("APPENDS", "ADDITEMS"):
            self.pop_mark()
            self.top()
        elif name == "SETITEM":
            value = self.pop()
            key = self.pop()
            self._setitems(self.top(), [key, value])
        elif name == "SETITEMS":
            items = self.pop_mark()
            self._setitems(self.top(), items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise PickleStructureError(f"pickle refers to memo entry {arg} that was never set")
            self.stack.append(self._taken(self.memo[arg]))
        elif name == "GLOBAL":
            self.stack.append(self.find_class(*arg))
        elif name == "STACK_GLOBAL":
            global_name = self.pop()
            module = self.pop()
            if type(global_name) is not str or type(module) is not str:
                self.problem("STACK_GLOBAL takes a module or name computed at load time")
                self.stack.append(_Opaque())
            else:
                self.stack.append(self.find_class(module, global_name))
        elif name == "INST":
            cls = self.find_class(*arg)
            items = self.pop_mark()
            self.stack.append(self._instantiate(cls, items))
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise PickleStructureError("OBJ without a class")
            self.stack.append(self._instantiate(items[0], items[1:]))
        elif name == "NEWOBJ":
            args = self.pop()
            cls = self.pop()
            self.stack.append(self._new(cls, args))
        elif name == "NEWOBJ_EX":
            kwargs = self.pop()
            args = self.pop()
            cls = self.pop()
            self.stack.append(self._new(cls, (args, kwargs)))
        elif name == "REDUCE":
            args = self.pop()
            func = self._taken(self.top())
            self.stack[-1] = self._reduce(func, args)
        elif name == "BUILD":
            state = self.pop()
            self._build(state, self.top())
        elif name in ("PERSID", "BINPERSID"):
            if name == "BINPERSID":
                self.pop()
            self.problem("pickle uses persistent ids, which joblib.load does not support")
            self.stack.append(_Opaque())
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.problem(f"pickle uses the copyreg extension registry (code {arg})")
            self.stack.append(_Opaque())
        else:
            raise PickleStructureError(f"unsupported pickle opcode {name}")

    def _setitems(self, target: Any, items: list[Any]) -> Any:
        if len(items) % 2:
            raise PickleStructureError("odd number of items for a pickle dict")
        if isinstance(target, _Dict):  # __setitem__ of an object: nothing to track
            for key, value in zip(items[::2], items[1::2], strict=True):
                try:
                    if key in target or len(target) < MAX_DICT_ENTRIES:
                        target[key] = value
                    else:
                        target.complete = False
                except TypeError as exc:  # unhashable key: the unpickler fails here too
                    raise PickleStructureError(f"unhashable dict key in pickle: {exc}") from exc
        return target

    def _is_wrapper_class(self, value: Any) -> bool:
        return isinstance(value, _Global) and (value.module, value.name) == JOBLIB_ARRAY_WRAPPER

    def _new(self, cls: Any, args: Any) -> _Obj:
        # cls.__new__(cls, *args): how protocol 2+ pickles create instances; joblib writes
        # its wrappers this way. Only the top-level joblib stream treats them specially.
        return _Obj(cls, args, is_wrapper=self.joblib_arrays and self._is_wrapper_class(cls))

    def _instantiate(self, cls: Any, args: Any) -> _Obj:
        # cls(*args) runs __init__ with attacker-chosen arguments: joblib never creates
        # its wrappers like that, so we do not try to follow what __init__ would set.
        if self.joblib_arrays and self._is_wrapper_class(cls):
            raise _UnfollowableError("joblib NumpyArrayWrapper is created by calling it")
        return _Obj(cls, args)

    def _reduce(self, func: Any, args: Any) -> _Obj:
        # copyreg._reconstructor(cls, object, None) is how protocols 0/1 create instances.
        if (
            isinstance(func, _Global)
            and func.module == "copyreg"
            and func.name in ("_reconstructor", "__newobj__")
            and isinstance(args, tuple)
            and args
        ):
            return self._new(args[0], args[1:])
        return self._instantiate(func, args)

    def _build(self, state: Any, inst: Any) -> None:
        if not isinstance(inst, _Obj):
            return
        inst.state = state
        if not inst.is_wrapper:
            return
        # pickle._Unpickler.load_build: a dict state, or (dict state, slot state).
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
        for part in parts:
            if part is not None and not (isinstance(part, _Dict) and part.complete):
                raise _UnfollowableError("joblib NumpyArrayWrapper state is not a plain dict")
            inst.attrs.update(part or {})
        self._skip_joblib_array(inst.attrs)
        self.walk.joblib_arrays += 1
        self.stack[-1] = _Opaque()  # joblib replaces the wrapper with the array it read

    # --- joblib array payloads (mirrors NumpyArrayWrapper.read_array) ---

    def _skip_joblib_array(self, attrs: dict[str, Any]) -> None:
        shape = attrs.get("shape")
        if not isinstance(shape, tuple) or not all(type(dim) is int and dim >= 0 for dim in shape):
            raise _UnfollowableError("joblib array shape is not a tuple of sizes")
        dtype = self._dtype(attrs.get("dtype"))
        count = 1
        for dim in shape:
            count *= dim
        if dtype.hasobject:
            # Object arrays are a nested pickle read by a plain (non-joblib) unpickler.
            _Machine(_Reader(self.reader.raw, self.walk), self.walk, joblib_arrays=False).run()
            return
        if attrs.get("numpy_array_alignment_bytes") is not None:
            padding = self.reader.raw.read(1)
            if len(padding) != 1:
                raise PickleStructureError("file ends inside a joblib array payload")
            self.reader._count(1)
            self.reader.raw_skip(padding[0])
        self.reader.raw_skip(count * dtype.itemsize)

    def _dtype(self, value: Any) -> np.dtype[Any]:
        """Rebuild the numpy dtype of a joblib array from literal pickle values only."""
        if not (
            isinstance(value, _Obj)
            and isinstance(value.callee, _Global)
            and (value.callee.module, value.callee.name) == NUMPY_DTYPE
            and isinstance(value.args, tuple)
            and all(isinstance(a, str | bool | int) for a in value.args)
        ):
            raise _UnfollowableError("joblib array dtype is not a plain numpy dtype")
        try:
            dtype = np.dtype(*value.args)
            if value.state is not None:
                # numpy's stubs leave out dtype.__setstate__, which numpy's own unpickling calls.
                dtype.__setstate__(self._literal(value.state))  # type: ignore[attr-defined]
        except _UnfollowableError:
            raise
        except Exception as exc:  # numpy rejects malformed dtype state with many types
            raise _UnfollowableError(f"joblib array dtype is invalid: {exc}") from exc
        return dtype

    def _literal(self, value: Any) -> Any:
        if isinstance(value, _Obj):
            return self._dtype(value)  # nested dtypes of structured arrays
        if isinstance(value, tuple):
            return tuple(self._literal(v) for v in value)
        if isinstance(value, _Dict) and value.complete:
            return {k: self._literal(v) for k, v in value.items()}
        if value is None or isinstance(value, str | bytes | int | float):
            return value
        raise _UnfollowableError("joblib array dtype state holds a non-literal value")


class _UnfollowableError(PickleStructureError):
    """A joblib array whose byte layout cannot be derived from literal values."""


def walk_pickle_file(path: Path, *, joblib_arrays: bool = True) -> tuple[PickleWalk, str | None]:
    """Walk a pickle/joblib file as its loader reads it: (walk, compressor or None).

    ``joblib_arrays=True``: as ``modelkit.loading.load_joblib`` (joblib's unpickler) reads
    it; False: as ``load_pickle`` (a plain unpickler, never decompressing) reads it.
    Raises PickleStructureError for files that are not complete, well-formed pickles.
    """
    if not joblib_arrays:
        with open(path, "rb") as raw:
            return walk_pickle(raw, joblib_arrays=False), None
    with open_pickle_stream(path) as (stream, compression):
        return walk_pickle(stream), compression
