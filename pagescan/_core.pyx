# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""The compiled core: per-page categories -> page_region runs, exactly as the kernel.

``_reference.py`` is the readable definition of every function here; the two are
kept equal by the hypothesis tests. Arguments are checked by the shared
``_args`` helpers (O(1) per call) so that both raise the same errors.
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE

from pagescan cimport _kernel as kernel

import array as _array
import operator

from pagescan._args import check_region, check_u64
from pagescan._types import _CATEGORY_CACHE, as_category, category_repr

from pagescan._args import (check_int, check_limits, check_page_size, check_range,
                            check_uint_buffer)
from pagescan._out import check_region_out
from pagescan._types import Masks, PageRegion, ScanCount, ScanResult, coerce_masks

include "_kernel.pxi"
include "_mprotect.pxi"

IMPLEMENTATION = "cython"
#: Checked by pagescan/__init__.py: a stale build fails loudly at import.
CORE_ABI = 1

cdef enum:
    # in 64-bit category input, the bit of a page with no mapping (pagescan.HOLE)
    HOLE_BIT = 63


# ------------------------------------------------------------ integer arguments

cdef extern from "Python.h":
    # called without Cython's error checks: fast_u64 looks at the error itself
    unsigned long long _as_ull "PyLong_AsUnsignedLongLong"(object) noexcept
    void* _err_occurred "PyErr_Occurred"() noexcept
    void _err_clear "PyErr_Clear"() noexcept
    bint _is_int "PyLong_Check"(object) noexcept
    bint _is_bool "PyBool_Check"(object) noexcept


cdef inline bint fast_u64(object v, uint64_t* out) noexcept:
    """An int (not a bool) in [0, 2**64): its value in ``*out``, True. For an
    int subclass (Category) that is the int's own value, as ``operator.index``
    gives. Anything else (floats included, which Cython's own conversion would
    truncate): False, and the caller asks the shared check in ``_args`` for the
    value or the error, so both implementations accept and refuse the same."""
    cdef unsigned long long r
    if not _is_int(v) or _is_bool(v):
        return False
    r = _as_ull(v)
    if r == <unsigned long long>-1 and _err_occurred() != NULL:
        _err_clear()
        return False
    out[0] = r
    return True


cdef inline bint fast_region(object r, uint64_t* out) noexcept:
    """A tuple (PageRegion included) of three u64 ints into out[0..2]."""
    cdef tuple t
    if not isinstance(r, tuple):
        return False
    t = <tuple>r
    return (len(t) == 3 and fast_u64(t[0], out) and fast_u64(t[1], out + 1)
            and fast_u64(t[2], out + 2))


cdef inline uint64_t u64_arg(object v, str name) except? 0xFFFFFFFFFFFFFFFF:
    """An argument as a u64: TypeError/ValueError naming it (as ``_args.check_u64``)."""
    cdef uint64_t r
    if fast_u64(v, &r):
        return r
    return check_u64(v, name)


cdef inline int int_arg(object v, str name) except? -1:
    """A non-negative C int argument (a file descriptor, flags, an advice)."""
    cdef uint64_t r
    if fast_u64(v, &r) and r <= 0x7FFFFFFF:
        return <int>r
    return check_int(v, name, maximum=0x7FFFFFFF)


cdef list _CATS = _CATEGORY_CACHE
cdef object _tuple_new = tuple.__new__


cdef inline object page_region(uint64_t s, uint64_t e, uint64_t c):
    """PageRegion(s, e, Category(c)); the Category from the shared cache."""
    cdef object cat = None
    if c <= 0x1FF:
        cat = _CATS[c]
    if cat is None:
        cat = as_category(c)
    return _tuple_new(PageRegion, (s, e, cat))


def _regionarray_from_array(data):
    """Unpickle: a RegionArray of the u64 triples in ``data`` (an ``array('Q')``)."""
    if (not isinstance(data, _array.array) or data.typecode not in ("Q", "L")
            or data.itemsize != 8 or len(data) % 3):
        raise ValueError("RegionArray pickle data must be an array('Q') of triples")
    cdef RegionArray out = RegionArray.__new__(RegionArray)
    cdef Py_ssize_t n = len(data) // 3
    cdef Py_buffer view
    if n:
        out.reserve(n)
        PyObject_GetBuffer(data, &view, PyBUF_ANY_CONTIGUOUS)
        memcpy(out.data, view.buf, <size_t>n * 24)
        PyBuffer_Release(&view)
        out.n = n
    return out


# ----------------------------------------------------------------- RegionArray


@cython.freelist(8)
cdef class RegionArray:
    """Regions laid out as ``struct page_region`` (three u64 each: start, end, categories).

    Exposes the buffer protocol as a read-only ``(n, 3)`` uint64 array, so
    ``numpy.asarray(regions)`` and ``memoryview(regions)`` share its memory.
    Iterates as :class:`PageRegion`, ``categories`` a :class:`Category`. Values
    given (``RegionArray(regions)``, :meth:`append`) are ints in ``[0, 2**64)``:
    TypeError or ValueError naming the field otherwise. Pickles and copies.
    """

    cdef uint64_t* data
    cdef Py_ssize_t n, cap
    cdef int exports
    cdef Py_ssize_t shape[2]
    cdef Py_ssize_t strides[2]

    def __cinit__(self):
        self.data = NULL
        self.n = 0
        self.cap = 0
        self.exports = 0

    def __init__(self, regions=(), *, capacity=0):
        cdef Py_ssize_t cap = check_int(capacity, "capacity", maximum=PY_SSIZE_T_MAX // 24)
        cdef uint64_t* p
        if cap > self.cap:              # exactly ``capacity``: it bounds scans into it
            if self.exports:
                raise BufferError("RegionArray cannot grow while a buffer view of it exists")
            p = <uint64_t*>realloc(self.data, <size_t>cap * 24)
            if p == NULL:
                raise MemoryError()
            self.data = p
            self.cap = cap
        cdef uint64_t v[3]
        cdef Py_ssize_t i = 0
        for r in regions:
            if not fast_region(r, v):
                v[0], v[1], v[2] = check_region(r, f"regions[{i}]")
            self.push(v[0], v[1], v[2])
            i += 1

    @classmethod
    def empty(cls, capacity):
        """An empty RegionArray with room for ``capacity`` regions: a result buffer
        to pass as ``out=`` to the scans and reuse across calls (like the kernel's
        ``vec``). Its memory is touched once here, so reuse does not page-fault."""
        cdef RegionArray ra = cls(capacity=capacity)
        if ra.cap:
            memset(ra.data, 0, <size_t>ra.cap * 24)
        return ra

    @property
    def capacity(self):
        """How many regions fit without growing (the bound on a scan into it)."""
        return self.cap

    def __dealloc__(self):
        free(self.data)

    cdef int reserve(self, Py_ssize_t need) except -1:
        """Make room for at least ``need`` regions in total.

        Refuses (BufferError) while a buffer view exists, even when the capacity
        suffices: every caller then changes ``n``, which the views' shape fixed.
        """
        if self.exports:
            raise BufferError("RegionArray cannot grow while a buffer view of it exists")
        if need <= self.cap:
            return 0
        if grow_regions(&self.data, &self.cap, need) < 0:
            raise MemoryError()
        return 0

    cdef int push(self, uint64_t start, uint64_t end, uint64_t categories) except -1:
        self.reserve(self.n + 1)
        self.data[3 * self.n] = start
        self.data[3 * self.n + 1] = end
        self.data[3 * self.n + 2] = categories
        self.n += 1
        return 0

    def append(self, start, end, categories):
        """Add one region at the end (ints in ``[0, 2**64)``; TypeError/ValueError
        naming the argument otherwise, as the reference)."""
        cdef uint64_t s, e, c
        if not (fast_u64(start, &s) and fast_u64(end, &e) and fast_u64(categories, &c)):
            s = check_u64(start, "start")
            e = check_u64(end, "end")
            c = check_u64(categories, "categories")
        self.push(s, e, c)

    def __reduce__(self):
        data = _array.array("Q")
        if self.n:
            data.frombytes((<char*>self.data)[:self.n * 24])
        return (_regionarray_from_array, (data,))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        cdef Py_ssize_t j
        cdef RegionArray out
        if isinstance(i, slice):
            out = RegionArray.__new__(RegionArray)
            for j in range(*i.indices(self.n)):
                out.push(self.data[3 * j], self.data[3 * j + 1], self.data[3 * j + 2])
            return out
        i = operator.index(i)
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("RegionArray index out of range")
        j = i
        return page_region(self.data[3 * j], self.data[3 * j + 1], self.data[3 * j + 2])

    def __iter__(self):
        cdef Py_ssize_t j
        for j in range(self.n):
            yield page_region(self.data[3 * j], self.data[3 * j + 1], self.data[3 * j + 2])

    def __eq__(self, other):
        cdef RegionArray o
        if isinstance(other, RegionArray):
            o = other
            return o.n == self.n and all(
                self.data[k] == o.data[k] for k in range(3 * self.n))
        try:
            return list(self) == [tuple(r) for r in other]
        except TypeError:
            return NotImplemented

    def __repr__(self):
        inner = ", ".join(f"(0x{s:x}, 0x{e:x}, {category_repr(c)})" for s, e, c in list(self[:4]))
        more = ", ..." if self.n > 4 else ""
        return f"RegionArray([{inner}{more}], len={self.n})"

    def pages(self, page_size=4096):
        """Total number of pages in all regions."""
        cdef uint64_t ps = check_page_size(page_size), total = 0, s, e, q
        cdef Py_ssize_t j
        big = 0                         # overflow of the u64 sum (overlapping regions)
        for j in range(self.n):
            s = self.data[3 * j]
            e = self.data[3 * j + 1]
            if e > s:
                q = (e - s) // ps
                if total > 0xFFFFFFFFFFFFFFFF - q:
                    big += total
                    total = 0
                total += q
        return big + total

    def addresses(self, page_size=4096):
        """The address of every page of every region, ascending, as ``array('Q')``."""
        cdef uint64_t ps = check_page_size(page_size)
        cdef uint64_t count = 0, s, e, t, cnt
        cdef uint64_t limit = <uint64_t>PY_SSIZE_T_MAX // 8
        cdef Py_ssize_t j, k = 0
        # as range(start, end, ps): a partial last page counts (and sizes the output)
        for j in range(self.n):
            s = self.data[3 * j]
            e = self.data[3 * j + 1]
            if e > s:
                cnt = (e - s - 1) // ps + 1
                if cnt > limit - count:
                    raise MemoryError(f"RegionArray.addresses: too many pages of {ps} bytes")
                count += cnt
        out = _array.array("Q", bytes(<Py_ssize_t>(8 * count)))
        cdef uint64_t[::1] dst = out
        for j in range(self.n):
            s = self.data[3 * j]
            e = self.data[3 * j + 1]
            if e > s:
                cnt = (e - s - 1) // ps + 1
                for t in range(cnt):
                    dst[k] = s + t * ps
                    k += 1
        return out

    def tolist(self):
        return list(self)

    @property
    def nbytes(self):
        return self.n * 24

    def memoryview(self):
        """A read-only ``(n, 3)`` uint64 memoryview of the regions, no copy."""
        return memoryview(self)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("RegionArray is read-only")
        self.shape[0] = self.n
        self.shape[1] = 3
        self.strides[0] = 24
        self.strides[1] = 8
        buffer.buf = <void*>self.data if self.data != NULL else <void*>&self.shape[0]
        buffer.obj = self
        buffer.len = self.n * 24
        buffer.readonly = 1
        buffer.itemsize = 8
        buffer.format = "Q"
        buffer.ndim = 2
        buffer.shape = self.shape
        buffer.strides = self.strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1


cdef int grow_regions(uint64_t** data, Py_ssize_t* cap, Py_ssize_t need) noexcept nogil:
    """Grow a page_region array to hold ``need`` regions (geometric); -1 on ENOMEM."""
    cdef Py_ssize_t newcap = cap[0] * 2 if cap[0] else 64
    cdef uint64_t* p
    if need <= cap[0]:
        return 0
    if newcap < need:
        newcap = need
    p = <uint64_t*>realloc(data[0], <size_t>newcap * 24)
    if p == NULL:
        return -1
    data[0] = p
    cap[0] = newcap
    return 0


# ------------------------------------------------------------------- scan_pages


ctypedef fused cat_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t


cdef struct Filter:
    uint64_t inverted, mask, anyof, ret
    uint64_t max_pages      # 0: no limit
    int64_t max_regions     # -1: no limit


cdef extern from "_scan.h":
    # the run loop, in C (pagescan/_scan.h): per item size, with and without anyof
    int pagescan_scan_u64_any(const uint64_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                              uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                              Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u64(const uint64_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                          Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u32_any(const uint32_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                              uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                              Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u32(const uint32_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                          Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u16_any(const uint16_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                              uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                              Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u16(const uint16_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                          uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                          Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u8_any(const uint8_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                             uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                             Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    int pagescan_scan_u8(const uint8_t*, Py_ssize_t, uint64_t, uint64_t, uint64_t,
                         uint64_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t**,
                         Py_ssize_t*, Py_ssize_t*, uint64_t*) noexcept nogil
    # the vector gap skip's instruction set: 1 AVX2, 0 SSE2, -1 the CPU's best
    int pagescan_simd_set(int) noexcept nogil
    int pagescan_simd_get() noexcept nogil
    # pagemap entries -> categories (a table indexed by the top 9 bits)
    void pagescan_pagemap_categories(const uint64_t*, uint64_t*, Py_ssize_t, uint64_t,
                                     uint64_t, int, int, uint64_t) noexcept nogil


def _simd(str isa=None):
    """The instruction set of the run loop's vector gap skip: "avx2", "sse2", or
    None where there is none (not x86-64). ``isa`` forces one for the tests ("avx2"
    only where the CPU has it; "auto": the CPU's best)."""
    cdef int r
    if isa is None:
        r = pagescan_simd_get()
    elif isa in ("auto", "avx2", "sse2"):
        r = pagescan_simd_set({"auto": -1, "avx2": 1, "sse2": 0}[isa])
    else:
        raise ValueError(f"isa must be 'auto', 'avx2' or 'sse2'; got {isa!r}")
    return None if r < 0 else ("avx2" if r else "sse2")


cdef int scan_run(const cat_t* cats, Py_ssize_t n, uint64_t start, uint64_t ps,
                  const Filter* f, uint64_t** data, Py_ssize_t* nreg, Py_ssize_t* cap,
                  uint64_t* walk_end) noexcept nogil:
    """The kernel's filter/merge/stop rules over ``n`` pages (pagescan/_scan.h);
    -1 on ENOMEM. Regions are appended to ``*data`` from ``*nreg``, growing it
    past ``*cap`` (a caller passing max_regions <= *cap never sees it move).
    ``*walk_end`` is left alone on normal completion (the caller set it to end)."""
    if cat_t is uint64_t:
        if f.anyof:
            return pagescan_scan_u64_any(cats, n, start, ps, f.inverted, f.mask, f.anyof,
                                         f.ret, f.max_pages, f.max_regions, data, nreg,
                                         cap, walk_end)
        return pagescan_scan_u64(cats, n, start, ps, f.inverted, f.mask, 0, f.ret,
                                 f.max_pages, f.max_regions, data, nreg, cap, walk_end)
    elif cat_t is uint32_t:
        if f.anyof:
            return pagescan_scan_u32_any(cats, n, start, ps, f.inverted, f.mask, f.anyof,
                                         f.ret, f.max_pages, f.max_regions, data, nreg,
                                         cap, walk_end)
        return pagescan_scan_u32(cats, n, start, ps, f.inverted, f.mask, 0, f.ret,
                                 f.max_pages, f.max_regions, data, nreg, cap, walk_end)
    elif cat_t is uint16_t:
        if f.anyof:
            return pagescan_scan_u16_any(cats, n, start, ps, f.inverted, f.mask, f.anyof,
                                         f.ret, f.max_pages, f.max_regions, data, nreg,
                                         cap, walk_end)
        return pagescan_scan_u16(cats, n, start, ps, f.inverted, f.mask, 0, f.ret,
                                 f.max_pages, f.max_regions, data, nreg, cap, walk_end)
    else:
        if f.anyof:
            return pagescan_scan_u8_any(cats, n, start, ps, f.inverted, f.mask, f.anyof,
                                        f.ret, f.max_pages, f.max_regions, data, nreg,
                                        cap, walk_end)
        return pagescan_scan_u8(cats, n, start, ps, f.inverted, f.mask, 0, f.ret,
                                f.max_pages, f.max_regions, data, nreg, cap, walk_end)


cdef object _DEFAULT_MASKS = Masks()

# The filter of the last Masks object scanned with (Masks is immutable): repeated
# calls with the same masks skip five attribute reads.
cdef object _last_masks = None
cdef uint64_t _lm_inverted, _lm_mask, _lm_anyof, _lm_ret
cdef bint _lm_nothing


cdef extern from *:
    """
    /* A tuple subclass (a NamedTuple: ScanResult, ScanCount) of two items, made as
       tuple.__new__ makes it, without the Python-level __new__ call. */
    static PyObject* pagescan_pair(PyObject* type, PyObject* a, PyObject* b) {
        PyTypeObject* t = (PyTypeObject*)type;
        PyObject* r = t->tp_alloc(t, 2);
        if (r == NULL)
            return NULL;
        Py_INCREF(a);
        PyTuple_SET_ITEM(r, 0, a);
        Py_INCREF(b);
        PyTuple_SET_ITEM(r, 1, b);
        return r;
    }
    """
    object pagescan_pair(object type, object a, object b)
    int _get_buffer "PyObject_GetBuffer"(object, Py_buffer*, int) noexcept
    int PyBUF_RECORDS_RO


cdef inline bint fast_categories(object obj, Py_buffer* view) noexcept:
    """The buffer of a 1-D, contiguous, native unsigned 8/16/32/64-bit ``obj`` in
    ``*view`` (held: True). Anything else (or any doubt): False, nothing held, and
    the caller asks ``_args.check_uint_buffer`` for the value or the error."""
    cdef const char* f
    cdef Py_ssize_t isz
    if _get_buffer(obj, view, PyBUF_RECORDS_RO) < 0:
        _err_clear()
        return False
    isz = view.itemsize
    f = view.format
    if f != NULL:
        if f[0] == b'@' or f[0] == b'=' or f[0] == b'<':
            f += 1
        if f[0] == 0 or f[1] != 0 or (f[0] != b'B' and f[0] != b'H' and f[0] != b'I'
                                      and f[0] != b'L' and f[0] != b'Q' and f[0] != b'N'):
            PyBuffer_Release(view)
            return False
    if (view.ndim != 1 or not (isz == 1 or isz == 2 or isz == 4 or isz == 8)
            or (view.shape[0] > 1 and view.strides[0] != isz)):
        PyBuffer_Release(view)
        return False
    return True


cdef class _OutBuf:
    """The destination of a scan: a RegionArray's memory or a writable (n, 3) u64
    buffer held for the duration of the call."""
    cdef uint64_t* data
    cdef Py_ssize_t cap
    cdef RegionArray ra
    cdef Py_buffer view
    cdef bint held

    cdef int acquire(self, out) except -1:
        if isinstance(out, RegionArray):
            self.ra = <RegionArray>out
            self.data = self.ra.data
            self.cap = self.ra.cap
            return 0
        mv = check_region_out(out)
        PyObject_GetBuffer(mv, &self.view, PyBUF_ANY_CONTIGUOUS | PyBUF_WRITABLE)
        self.held = True
        self.data = <uint64_t*>self.view.buf
        self.cap = mv.shape[0]
        return 0

    cdef void set_count(self, Py_ssize_t k) noexcept:
        if self.ra is not None:
            self.ra.n = k

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef int run_scan(Py_buffer* view, Py_ssize_t isz, Py_ssize_t n, uint64_t s, uint64_t ps,
                  const Filter* f, uint64_t** data, Py_ssize_t* nreg, Py_ssize_t* cap,
                  uint64_t* walk_end) noexcept nogil:
    if isz == 8:
        return scan_run(<const uint64_t*>view.buf, n, s, ps, f, data, nreg, cap, walk_end)
    elif isz == 4:
        return scan_run(<const uint32_t*>view.buf, n, s, ps, f, data, nreg, cap, walk_end)
    elif isz == 2:
        return scan_run(<const uint16_t*>view.buf, n, s, ps, f, data, nreg, cap, walk_end)
    return scan_run(<const uint8_t*>view.buf, n, s, ps, f, data, nreg, cap, walk_end)


def scan_pages(categories, start=0, page_size=4096, masks=None, max_pages=0,
               max_regions=None, out=None):
    """Filter and merge per-page categories into regions, as PAGEMAP_SCAN does.

    ``categories[i]`` belongs to the page at ``start + i * page_size``. Returns
    ``ScanResult(regions, walk_end)``. The rules: docs/kernel.md, 'Filter',
    'Output' and 'walk_end'.

    With ``out`` (a ``RegionArray.empty(capacity)`` or a writable ``(n, 3)``
    uint64 buffer), the regions are written into it instead, nothing is
    allocated, its capacity bounds the answer as ``max_regions`` does, and the
    result is ``ScanCount(nregions, walk_end)``: the regions are ``out[:nregions]``
    (a RegionArray ``out`` gets that length).
    """
    global _last_masks, _lm_inverted, _lm_mask, _lm_anyof, _lm_ret, _lm_nothing
    cdef Py_buffer view
    cdef Py_ssize_t n, isz
    cdef uint64_t s = 0, ps = 0, mp = 0, mr_u = 0, end
    cdef int64_t mr = -1
    cdef bint fast = fast_categories(categories, &view)
    # the common case decided in C; anything unusual takes the shared checks below,
    # all of them in their order, so the errors are the same
    if fast:
        n = view.shape[0]
        isz = view.itemsize
        if not (fast_u64(page_size, &ps) and 0 < ps <= (<uint64_t>1 << 40)
                and (ps & (ps - 1)) == 0 and fast_u64(start, &s) and s % ps == 0
                and <uint64_t>n <= (0xFFFFFFFFFFFFFFFF - s) // ps
                and fast_u64(max_pages, &mp)
                and (max_regions is None or (fast_u64(max_regions, &mr_u)
                                             and mr_u <= 0x7FFFFFFFFFFFFFFF))
                and (masks is None or type(masks) is Masks)):
            PyBuffer_Release(&view)
            fast = False
        elif max_regions is not None:
            mr = <int64_t>mr_u
    if not fast:
        mv = check_uint_buffer(categories, "categories")
        ps_ = check_page_size(page_size)
        start_, end_ = check_range(start, len(mv), ps_)   # start_: the int, not the object
        coerce_masks(masks)
        mp_, mr_ = check_limits(max_pages, max_regions)
        PyObject_GetBuffer(mv, &view, PyBUF_ANY_CONTIGUOUS)
        n = len(mv)
        isz = mv.itemsize
        s = start_
        ps = ps_
        mp = mp_
        mr = mr_
    end = s + <uint64_t>n * ps
    if masks is None:
        masks = _DEFAULT_MASKS
    if masks is not _last_masks:
        _lm_inverted = masks.inverted
        _lm_mask = masks.mask
        _lm_anyof = masks.anyof
        _lm_ret = masks.return_mask
        _lm_nothing = masks.matches_nothing
        _last_masks = masks
    cdef Filter f
    f.inverted = _lm_inverted
    f.mask = _lm_mask
    f.anyof = _lm_anyof
    f.ret = _lm_ret
    f.max_pages = mp
    cdef bint nothing = _lm_nothing
    cdef _OutBuf ob = None
    cdef RegionArray res = None
    cdef uint64_t* data = NULL
    cdef Py_ssize_t nreg = 0, cap = 0
    cdef uint64_t walk_end = end
    cdef int rc = 0
    try:
        if out is not None:
            ob = _OutBuf.__new__(_OutBuf)
            ob.acquire(out)
            data = ob.data
            cap = ob.cap
            if mr < 0 or mr > cap:
                mr = cap        # the buffer's capacity bounds the answer: it never grows
        else:
            res = RegionArray.__new__(RegionArray)
        f.max_regions = mr
        if not nothing:
            if ob is not None:
                with nogil:
                    rc = run_scan(&view, isz, n, s, ps, &f, &data, &nreg, &cap, &walk_end)
            else:
                with nogil:
                    rc = run_scan(&view, isz, n, s, ps, &f, &res.data, &res.n, &res.cap,
                                  &walk_end)
    finally:
        PyBuffer_Release(&view)
    if rc < 0:
        raise MemoryError()
    if ob is not None:
        ob.set_count(nreg)
        return pagescan_pair(ScanCount, nreg, walk_end)
    return pagescan_pair(ScanResult, res, walk_end)


def copy_regions(regions, out):
    """Copy ``regions`` (a sequence of ``(start, end, categories)``) into ``out``
    (as for ``scan_pages(out=)``); returns the count. ValueError if they do not fit."""
    cdef _OutBuf ob = _OutBuf.__new__(_OutBuf)
    ob.acquire(out)
    cdef Py_ssize_t k = 0, nr = len(regions)
    cdef RegionArray src
    cdef uint64_t v[3]
    if nr > ob.cap:
        raise ValueError(f"{nr} regions do not fit in out (capacity {ob.cap})")
    if isinstance(regions, RegionArray):
        src = regions
        if nr:
            memmove(ob.data, src.data, <size_t>nr * 24)
        k = nr
    else:
        for r in regions:
            if not fast_region(r, v):       # the shared checks: no float truncated
                v[0], v[1], v[2] = check_region(r, f"regions[{k}]")
            ob.data[3 * k], ob.data[3 * k + 1], ob.data[3 * k + 2] = v[0], v[1], v[2]
            k += 1
    ob.set_count(k)
    return k


# --------------------------------------------------------------------- pagemap


def pagemap_to_categories(entries, *, wpallowed=False, none_written=False, zero_pfn=None,
                          out=None, soft_dirty_written=False):
    """Categories derived from raw ``/proc/PID/pagemap`` entries.

    The rules: docs/kernel.md, 'pagemap entries'.

    Exact for PRESENT (bit 63), SWAPPED (62), GUARD (58), SOFT_DIRTY (55), FILE
    (61; the huge zero page also sets it) and WRITTEN of non-zero entries (not
    bit 57). What an entry cannot show comes from the caller:

    * ``wpallowed``: OR WPALLOWED into every page (a property of the VMA);
    * ``none_written``: whether an entry with no page (all zero, apart from bit
      55) reads as WRITTEN. The kernel's answer depends on PTE-table existence,
      which pagemap does not show; pass True for a uffd-wp registered range on
      6.18.y (exact there), False (the default) reports "not written" for pages
      that were never populated;
    * ``zero_pfn``: the shared zero page's PFN, to set PFNZERO (PFNs read as 0
      unless the opener had CAP_SYS_ADMIN);
    * HUGE is never derived (the PMD mapping is not visible in pagemap);
    * ``soft_dirty_written``: WRITTEN means "soft-dirty" (the soft-dirty backend's
      view): set iff bit 55 is, instead of from bit 57 and ``none_written``.

    Returns an ``array('Q')`` (or fills ``out``, a writable u64 buffer of the same
    length, and returns it).
    """
    mv = check_uint_buffer(entries, "entries", itemsizes=(8,))
    cdef Py_ssize_t n = len(mv)
    if out is None:
        result = _array.array("Q", bytes(8 * n))
        dmv = memoryview(result)
    else:
        dmv = check_uint_buffer(out, "out", itemsizes=(8,))
        if dmv.readonly:
            raise TypeError("out must be writable")
        if len(dmv) != n:
            raise ValueError(f"out has {len(dmv)} items; entries has {n}")
        result = out
    cdef bint have_zero = zero_pfn is not None
    cdef uint64_t zpfn = check_int(zero_pfn, "zero_pfn") if have_zero else 0
    cdef uint64_t base = kernel.PAGE_IS_WPALLOWED if wpallowed else 0
    cdef uint64_t none_cat = base | (kernel.PAGE_IS_WRITTEN if none_written else 0)
    cdef bint sdw = bool(soft_dirty_written)
    cdef Py_buffer src, dst
    PyObject_GetBuffer(mv, &src, PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(dmv, &dst, PyBUF_ANY_CONTIGUOUS | PyBUF_WRITABLE)
    except BaseException:
        PyBuffer_Release(&src)
        raise
    cdef const uint64_t* ps = <const uint64_t*>src.buf
    cdef uint64_t* pd = <uint64_t*>dst.buf
    with nogil:
        pagescan_pagemap_categories(ps, pd, n, base, none_cat, sdw, have_zero, zpfn)
    PyBuffer_Release(&dst)
    PyBuffer_Release(&src)
    return result


# -------------------------------------------------------------------- coalesce


cdef int coalesce_into(RegionArray out, const uint64_t* src, Py_ssize_t n) except -1:
    """Append ``n`` page_regions to ``out``, merging at the seam and inside."""
    cdef Py_ssize_t j
    out.reserve(out.n + n)
    cdef uint64_t* d = out.data
    cdef Py_ssize_t k = out.n
    for j in range(n):
        if k and d[3 * k - 2] == src[3 * j] and d[3 * k - 1] == src[3 * j + 2]:
            d[3 * k - 2] = src[3 * j + 1]
        else:
            d[3 * k] = src[3 * j]
            d[3 * k + 1] = src[3 * j + 1]
            d[3 * k + 2] = src[3 * j + 2]
            k += 1
    out.n = k
    return 0


def coalesce(*parts):
    """Concatenate region lists in order, merging a region into the previous one
    when it starts where that one ends and has the same categories: the repair
    for a run that resumed calls split in two."""
    cdef RegionArray out = RegionArray.__new__(RegionArray), p
    cdef uint64_t tmp[3]
    cdef Py_ssize_t k = 0, i
    for part in parts:
        if isinstance(part, RegionArray):
            p = part
            coalesce_into(out, p.data, p.n)
        else:
            i = 0
            for r in part:
                if not fast_region(r, tmp):
                    tmp[0], tmp[1], tmp[2] = check_region(r, f"parts[{k}][{i}]")
                coalesce_into(out, tmp, 1)
                i += 1
        k += 1
    return out
