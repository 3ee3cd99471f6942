"""The C part of the package (everything else is in pyproject.toml): the P4Runtime wire reader
of a PP node's Writes and FM's cache, `cyberstar.p4rt._exact_wire` (see p4rt/exact_wire.py),
the hash table of a PP node's entry metadata, `cyberstar.pp._metadata` (pp/metadata.py), the
writer of the flow table's slots, `cyberstar.xdp._slots` (xdp/slots.py), and the PacketOuts'
test runs, `cyberstar.xdp._live_frames` (xdp/testrun.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cyberstar.p4rt._exact_wire",
            ["controller/cyberstar/p4rt/_exact_wire.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "cyberstar.pp._metadata",
            ["controller/cyberstar/pp/_metadata.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "cyberstar.xdp._slots",
            ["controller/cyberstar/xdp/_slots.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "cyberstar.xdp._live_frames",
            ["controller/cyberstar/xdp/_live_frames.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
    ]
)
