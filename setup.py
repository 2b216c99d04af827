"""Build the project's own C extensions; everything else is in pyproject.toml.

- sensor._pcap: the libpcap binding (capture edge);
- sensor._fast: the compiled hot path (decode + hourly aggregation), see docs/performance.md;
- central._rollup: summary tables to columns and fleet-wide source lifetimes, see
  docs/central.md ("Speed").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sensor._pcap",
            sources=["sensor/_pcap.c"],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "sensor._fast",
            sources=["sensor/_fast.c"],
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
