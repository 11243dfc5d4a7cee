"""regionclip: RegionCLIP (CVPR 2022) re-implemented as a pip-installable toolkit.

The package is importable without torch: the public names below are imported on first use
(module `__getattr__`), so `import regionclip_cli` and `regionclip --help` answer instantly.

    import regionclip_cli
    regionclip_cli.detect("photo.jpg", "cat,dog", pretrained="openai")
"""

__version__ = "0.1.0"

# Public name → the module that defines it.
_EXPORTS = {
    "detect": "regionclip_cli.stages.zeroshot.detect",
    "load_clip": "regionclip_cli.modeling.clip",
    "LoadedClip": "regionclip_cli.modeling.clip",
    "RegionEncoder": "regionclip_cli.modeling.region_encoder",
    "frozen_region_encoder": "regionclip_cli.modeling.region_encoder",
    "embed_names": "regionclip_cli.modeling.text",
    "ensemble_templates": "regionclip_cli.modeling.text",
    "ImageTransform": "regionclip_cli.data.images",
    "load_image": "regionclip_cli.data.images",
    "load_vocabulary": "regionclip_cli.data.vocab",
    "ZeroShotConfig": "regionclip_cli.stages.zeroshot.stage",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'regionclip_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
