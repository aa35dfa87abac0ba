"""A fake of libcamera's Python binding (``libcamera._libcamera``): only the types picamera2's configuration
dictionaries carry. It follows ``src/py/libcamera/py_color_space.cpp`` and ``py_transform.cpp``: the same
names, constructors, enum members and ``str()``; like the pybind11 classes it defines no ``__eq__`` or
``__repr__``, so two equal spaces compare by identity and ``repr()`` is the default object one.
"""

from ._libcamera import ColorSpace, Transform

__all__ = ["ColorSpace", "Transform"]
