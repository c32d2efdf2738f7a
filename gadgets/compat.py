"""Fixes for gadgetron-python 1.4.1 (issue 6, point 7), without editing site-packages.

numpy 2:

gadgetron-python's `writers.write_array` calls `np.array(array, dtype=dtype, copy=False)`, which numpy 2
turns into an error whenever a copy is needed (any ImageArray/ReconData/bucket whose data is not already
of the wire dtype), after the message id and shape have already been written: the peer then reads a
corrupt stream. The gadgets send only `ismrmrd.Image` items, which never reach write_array; this module
makes the other writers safe too, for anything a future gadget sends. `install()` replaces write_array in
every gadgetron module that bound it; it is idempotent and a no-op under numpy 1.

Writers: `Connection.add_writer` stores `lambda writable: writer(writable)` but `Connection.send` calls
writers as `writer(socket, item)`, so every writer added that way fails with a TypeError. `add_writer`
here puts the (accepts, writer) pair in the connection's writer list directly, as send expects it.
"""

from __future__ import annotations

import numpy as np

_MODULES = ("gadgetron.external.writers", "gadgetron.types.recon_data", "gadgetron.types.acquisition_bucket")


def write_array(destination, array, dtype) -> None:
    """gadgetron-python's write_array with numpy-2 semantics: copies only when the dtype differs."""
    from gadgetron.external.writers import write_vector

    write_vector(destination, array.shape)
    destination.write(np.asarray(array, dtype=dtype).tobytes(order="F"))


def install() -> bool:
    """Patch write_array where gadgetron-python bound it; True when a patch was needed (numpy >= 2)."""
    if int(np.__version__.split(".")[0]) < 2:
        return False
    import importlib

    for name in _MODULES:
        module = importlib.import_module(name)
        if getattr(module, "write_array", None) is not write_array:
            module.write_array = write_array
    return True


def add_writer(connection, accepts, writer) -> None:
    """Register writer(socket, item) for items `accepts` approves, ahead of the default writers."""
    connection.writers.insert(0, (accepts, writer))
