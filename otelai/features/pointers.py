"""Raw-pointer loads and stores for the numba kernels that walk protobuf bytes.

The kernels' helpers take a pointer to the bytes, not the array: numba reference-counts every
array a helper receives (atomically) and, once the helper is inlined, at every iteration of the
caller's loop, even on branches never taken; a raw pointer costs nothing. Used by the span
decoder (:mod:`otelai.features.span_decode_numba`) and the receiver's request validator
(:mod:`otelai.receiver.wire_check`).
"""

from __future__ import annotations

from typing import Any

from numba.core import types
from numba.extending import intrinsic


def _data_intrinsic(typingctx: Any, array: Any) -> tuple[Any, Any]:
    """The data pointer of a C-contiguous ``array``.

    The helpers take pointers, not arrays: numba reference-counts every array a helper gets
    (an external call) and, once a helper is inlined, at every iteration of the caller's loop;
    a raw pointer costs nothing. The caller keeps the array alive.
    """
    pointer = types.CPointer(array.dtype)  # type: ignore[no-untyped-call]

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return pointer(array), codegen


data: Any = intrinsic(_data_intrinsic)


def _word_intrinsic(typingctx: Any, pointer: Any, index: Any) -> tuple[Any, Any]:
    """The eight bytes at ``pointer[index:]`` as a little-endian uint64: one unaligned load.

    The caller guarantees eight readable bytes.
    """

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = builder.gep(args[0], [args[1]])
        word_pointer = builder.bitcast(address, context.get_value_type(types.uint64).as_pointer())
        return builder.load(word_pointer, align=1)

    return types.uint64(pointer, types.intp), codegen


word: Any = intrinsic(_word_intrinsic)


def _put_word_intrinsic(typingctx: Any, pointer: Any, index: Any, value: Any) -> tuple[Any, Any]:
    """Store the uint64 ``value`` little-endian at ``pointer[index:]``: one unaligned store.

    For the id columns: two stores copy a trace id, where a byte loop costs sixteen.
    """

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        address = builder.gep(args[0], [args[1]])
        word_pointer = builder.bitcast(address, context.get_value_type(types.uint64).as_pointer())
        builder.store(args[2], word_pointer, align=1)
        return context.get_dummy_value()

    return types.void(pointer, types.intp, types.uint64), codegen


put_word: Any = intrinsic(_put_word_intrinsic)
