"""regionclip: RegionCLIP (CVPR 2022) re-implemented as a pip-installable toolkit.

The package is importable without torch: heavy modules are imported inside the commands so that
`regionclip --help` answers instantly.
"""

__version__ = "0.1.0"
