"""Build the project's own libpcap binding (sensor._pcap); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sensor._pcap",
            sources=["sensor/_pcap.c"],
            libraries=["pcap"],
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
