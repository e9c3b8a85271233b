"""pagescan.constants against the C headers and the compiled core.

Every ``#define`` of ``pagescan/_kernel.h`` (and every ``#define`` of the system's
kernel headers whose name ``pagescan.constants`` also defines) must have the value
``pagescan.constants`` gives it; the struct sizes the header asserts must be the
ones Python uses; the compiled core must export the same numbers; and the
category enum the Cython declarations use must be :class:`pagescan.Category`.
"""

from __future__ import annotations

import array
import ast
import mmap
import operator
import os
import re
from pathlib import Path

import pytest

import pagescan
from pagescan import constants
from pagescan._types import ALL_CATEGORIES, Category

SRC = Path(__file__).resolve().parents[1] / "pagescan"
KERNEL_H = SRC / "_kernel.h"

SYSTEM_HEADERS = [
    "/usr/include/linux/userfaultfd.h",
    "/usr/include/asm-generic/mman-common.h",
    "/usr/include/linux/mman.h",
    "/usr/include/linux/capability.h",
]

# -- a small evaluator for the integer macros these headers use -------------------------

_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)[ \t]+(.+?)\s*$", re.M)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU])\b")
_CAST = re.compile(r"\(\s*(?:__u64|__u32|uint64_t|unsigned\s+long(?:\s+long)?|int)\s*\)")
_IOC = re.compile(r"^_IO(WR|R|W)\(\s*(.+?)\s*,\s*(.+?)\s*,\s*struct\s+(\w+)\s*\)$")
_BINOPS = {ast.LShift: operator.lshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
           ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.RShift: operator.rshift}
_IOC_DIR = {"W": 1, "R": 2, "WR": 3}


def _eval(node: ast.AST, names: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) == 1:
        return ord(node.value)                            # a C character constant
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    raise ValueError(f"not an integer expression: {ast.dump(node)}")


def c_int(expr: str, names: dict[str, int]) -> int | None:
    """The value of a C integer macro body, or None when it is not one."""
    expr = _CAST.sub("", _COMMENT.sub("", expr)).strip()
    expr = _SUFFIX.sub(r"\1", expr)
    try:
        return _eval(ast.parse(expr, mode="eval").body, names)
    except (SyntaxError, ValueError):
        return None


def struct_sizes(text: str) -> dict[str, int]:
    """Sizes of the structs made only of uint64_t fields, by counting the fields."""
    sizes = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, re.S):
        fields = [f.strip() for f in body.split(";") if f.strip()]
        if all(f.startswith("uint64_t ") for f in fields):
            sizes[name] = 8 * len(fields)
    return sizes


def header_defines(text: str, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Every integer ``#define`` of a header (later definitions refer to earlier ones)."""
    names: dict[str, int] = {}
    for name, body in _DEFINE.findall(_COMMENT.sub("", text)):
        m = _IOC.match(body)
        if m and sizes is not None and m.group(4) in sizes:
            kind, typ, nr = m.group(1), c_int(m.group(2), names), c_int(m.group(3), names)
            if typ is not None and nr is not None:
                names[name] = (_IOC_DIR[kind] << 30 | sizes[m.group(4)] << 16
                               | typ << 8 | nr)
            continue
        value = c_int(body, names)
        if value is not None:
            names[name] = value
    return names


# -- the evaluator itself -----------------------------------------------------------------

@pytest.mark.parametrize(("expr", "value"), [
    ("(1ULL << 15)", 1 << 15), ("((__u64)1<<2)", 4), ("0x100000", 0x100000),
    ("((__u64)0xAA)", 0xAA), ("1", 1), ("(1<<12)", 1 << 12), ("'f'", ord("f")),
])
def test_c_int(expr, value):
    assert c_int(expr, {}) == value


def test_c_int_refuses_what_it_cannot_read():
    assert c_int("_IOWR(UFFDIO, 0x3F, struct uffdio_api)", {}) is None
    assert c_int("(UFFD_FEATURE_X | 1)", {}) is None


# -- _kernel.h ----------------------------------------------------------------------------

def kernel_h() -> tuple[dict[str, int], dict[str, int], str]:
    text = KERNEL_H.read_text()
    sizes = struct_sizes(text)
    return header_defines(text, sizes), sizes, text


def test_kernel_h_every_define_agrees():
    defines, _, _ = kernel_h()
    # pagescan's own names carry a prefix so that newer system headers never clash
    checked = {}
    for name, value in defines.items():
        if name == "PAGESCAN_KERNEL_H":
            continue
        public = name.removeprefix("PAGESCAN_")
        assert hasattr(constants, public), f"_kernel.h defines {name}; constants lacks {public}"
        assert getattr(constants, public) == value, (
            f"{name} is 0x{value:x} in _kernel.h, 0x{getattr(constants, public):x} in constants")
        checked[public] = value
    assert {"PAGEMAP_SCAN", "PM_SCAN_WP_MATCHING", "PM_SCAN_CHECK_WPASYNC",
            "UFFD_USER_MODE_ONLY", "UFFD_FEATURE_WP_ASYNC", "UFFD_FEATURE_WP_UNPOPULATED",
            "UFFD_FEATURE_WP_HUGETLBFS_SHMEM"} <= checked.keys()


def test_kernel_h_struct_sizes():
    _, sizes, text = kernel_h()
    asserted = {name: int(n) for name, n in
                re.findall(r"sizeof\(struct\s+(\w+)\)\s*==\s*(\d+)", text)}
    assert sizes == asserted        # the header asserts what its fields add up to
    assert sizes["pagescan_pm_scan_arg"] == constants.PM_SCAN_ARG_SIZE == 96
    assert sizes["pagescan_page_region"] == constants.PAGE_REGION_SIZE == 24


def test_pagemap_scan_ioctl_number():
    # _IOWR('f', 16, struct pm_scan_arg): dir 3 (read|write), size, type, number
    assert constants.PAGEMAP_SCAN == (3 << 30 | constants.PM_SCAN_ARG_SIZE << 16
                                      | ord("f") << 8 | 16)


# -- the system's kernel headers ----------------------------------------------------------

@pytest.mark.parametrize("path", SYSTEM_HEADERS, ids=lambda p: p.removeprefix("/usr/include/"))
def test_system_header_agrees(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed (the kernel headers package)")
    defines = header_defines(Path(path).read_text())
    shared = sorted(set(defines) & set(constants.__all__))
    assert shared, f"{path} defines none of pagescan.constants' names"
    wrong = {n: (defines[n], getattr(constants, n)) for n in shared
             if defines[n] != getattr(constants, n)}
    assert not wrong, f"(header, constants) differ: {wrong}"


def test_python_mmap_module_agrees():
    for name in ("PROT_READ", "PROT_WRITE", "PROT_EXEC", "MAP_SHARED", "MAP_PRIVATE",
                 "MAP_ANONYMOUS", "MADV_DONTNEED", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE",
                 "MADV_PAGEOUT", "MADV_POPULATE_WRITE"):
        if hasattr(mmap, name):
            assert getattr(mmap, name) == getattr(constants, name), name


# -- values the headers do not spell ------------------------------------------------------

def test_page_size():
    assert constants.PAGE_SIZE == mmap.PAGESIZE == os.sysconf("SC_PAGE_SIZE")
    assert 1 << constants.PAGE_SHIFT == constants.PAGE_SIZE
    assert pagescan.PAGE_SIZE == constants.PAGE_SIZE


def test_user_address_limit():
    assert constants.USER_ADDRESS_LIMIT == (1 << 47) - 4096
    assert constants.USER_ADDRESS_LIMIT % constants.PAGE_SIZE == 0


def test_pagemap_entry_bits():
    # fs/proc/task_mmu.c: PM_PFRAME_BITS 55, then one bit each
    assert constants.PM_PFN_MASK == (1 << 55) - 1
    bits = [constants.PM_SOFT_DIRTY, constants.PM_MMAP_EXCLUSIVE, constants.PM_UFFD_WP,
            constants.PM_GUARD_REGION, constants.PM_FILE, constants.PM_SWAP, constants.PM_PRESENT]
    assert [b.bit_length() - 1 for b in bits] == [55, 56, 57, 58, 61, 62, 63]
    assert all(b & constants.PM_PFN_MASK == 0 for b in bits)


def test_no_module_redefines_a_constant():
    """The modules that were cleaned up import these numbers instead of restating them."""
    names = set(constants.__all__) | {"PM_EXCLUSIVE", "PM_GUARD", "USER_TOP", "PAGE", "PS"}
    for mod in ("_reference.py", "_types.py", "memory.py", "_sysinfo.py", "_args.py"):
        tree = ast.parse((SRC / mod).read_text())
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                assert not (isinstance(t, ast.Name) and t.id in names), (
                    f"pagescan/{mod} assigns {t.id}; import it from pagescan.constants")


# -- the compiled core --------------------------------------------------------------------

def _core():
    if pagescan.IMPLEMENTATION != "cython":
        pytest.skip("the compiled core is not loaded")
    from pagescan import _core
    return _core


def test_core_exports_agree():
    core = _core()
    assert core.PM_SCAN_WP_MATCHING == constants.PM_SCAN_WP_MATCHING
    assert core.PM_SCAN_CHECK_WPASYNC == constants.PM_SCAN_CHECK_WPASYNC
    assert core.FEATURE_WP_ASYNC == constants.UFFD_FEATURE_WP_ASYNC
    assert core.FEATURE_WP_UNPOPULATED == constants.UFFD_FEATURE_WP_UNPOPULATED
    assert core.FEATURE_WP_HUGETLBFS_SHMEM == constants.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    assert core.USER_MODE_ONLY == constants.UFFD_USER_MODE_ONLY


# -- the Cython declarations (pagescan/_kernel.pxd) ---------------------------------------

def pxd_text() -> str:
    return "\n".join(line.split("#")[0] for line in (SRC / "_kernel.pxd").read_text().splitlines())


def test_pxd_category_enum_is_category():
    members = dict(re.findall(r"^\s+(PAGE_IS_\w+)\s*=\s*(.+?)\s*$", pxd_text(), re.M))
    enum = {name: c_int(expr, {}) for name, expr in members.items()}
    assert enum == {f"PAGE_IS_{c.name}": int(c) for c in Category}
    assert sum(enum.values()) == ALL_CATEGORIES


def test_pxd_names_the_macros_as_constants_does():
    """``const uint64_t PM_FILE "PAGESCAN_PM_FILE"``: the Cython name of each of
    _kernel.h's macros is the name pagescan.constants gives its value."""
    defines, _, _ = kernel_h()
    aliases = re.findall(r"^\s+const [\w ]+?\b(\w+) \"(\w+)\"\s*$", pxd_text(), re.M)
    assert len(aliases) >= 10
    for name, cname in aliases:
        assert cname in defines, f"_kernel.pxd declares {cname}, which _kernel.h lacks"
        assert getattr(constants, name) == defines[cname], (name, cname)


@pytest.mark.parametrize(("entry", "category"), [
    (constants.PM_PRESENT | 1, Category.PRESENT | Category.WRITTEN),
    (constants.PM_PRESENT | constants.PM_UFFD_WP | 1, Category.PRESENT),
    (constants.PM_SWAP | constants.PM_UFFD_WP, Category.SWAPPED),
    (constants.PM_PRESENT | constants.PM_FILE | constants.PM_UFFD_WP,
     Category.PRESENT | Category.FILE),
    (constants.PM_GUARD_REGION | constants.PM_UFFD_WP, Category.GUARD),
    (constants.PM_SOFT_DIRTY, Category.SOFT_DIRTY),
    (constants.PM_PRESENT | constants.PM_UFFD_WP | 7, Category.PRESENT | Category.PFNZERO),
])
def test_core_pagemap_bits_to_named_categories(entry, category):
    core = _core()
    got = core.pagemap_to_categories(array.array("Q", [entry]), zero_pfn=7)
    assert got[0] == category
