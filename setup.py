"""Build the project's own C extensions; everything else is in pyproject.toml.

- sensor.edges._pcap: the libpcap binding (capture edge);
- sensor.fast._fast: the compiled hot path (decode + hourly aggregation), sources in
  sensor/fast/src/ (fast.h says which file does what), see docs/performance.md;
- central._rollup: summary tables to columns and fleet-wide source lifetimes, see
  docs/central.md ("Speed").
"""

from glob import glob

from setuptools import Extension, setup

FAST_SOURCES = sorted(glob("sensor/fast/src/*.c"))  # one module from several files (fast.h)

setup(
    ext_modules=[
        Extension(
            "sensor.edges._pcap",
            sources=["sensor/edges/_pcap.c"],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "sensor.fast._fast",
            sources=FAST_SOURCES,
            depends=["sensor/fast/src/fast.h"],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "central._rollup",
            sources=["central/_rollup.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
