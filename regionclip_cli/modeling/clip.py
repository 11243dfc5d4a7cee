"""Loading CLIP models: open_clip names and tags, local weight files, our checkpoints.

Everything downstream (text embeddings, the region encoder, training) needs the same bundle: the
model, its tokenizer, its preprocessing constants and a stable `identity` string that caches can
key on. `load_clip` is the one place that turns what a user typed (`--model`, `--pretrained`,
`--weights`) into that bundle, and the one place that explains what went wrong when it cannot.

Only CLIPs with a ModifiedResNet image tower can serve as region encoders (RoIAlign needs a
convolutional trunk with a stride-16 map and an attention pool over a spatial grid), so other
families are refused up front with the list of names that work.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import open_clip
import torch

from regionclip_cli.modeling import checkpoints
from regionclip_cli.core.errors import RegionclipError

DEFAULT_MODEL = "RN50"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
SHIPPED_WEIGHTS_DIR = PACKAGE_DIR / "assets"
# Keys OpenAI's TorchScript archives carry next to the weights; they are not parameters.
OPENAI_ARCHIVE_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

_configs_registered = False


@dataclass
class LoadedClip:
    """A CLIP model ready for inference, with what callers need to feed it and to cache by it."""

    model: torch.nn.Module  # open_clip CLIP, eval mode, on `device`
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str  # open_clip model name
    identity: str  # name + weight source; equal identities mean equal weights
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_min_size: int | None  # recommended short side for detection, from our checkpoints
    input_max_size: int | None
    device: torch.device
    has_text_tower: bool = True  # False for detector checkpoints that carry no text tower
    notes: tuple[str, ...] = ()  # what a user should know about where the weights came from


def register_model_configs() -> None:
    """Make our own open_clip configs (e.g. `world-tiny`) known to open_clip, once per process."""
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


def _model_config(name: str) -> dict[str, Any] | None:
    register_model_configs()
    return open_clip.get_model_config(name)


def _config_is_modified_resnet(config: dict[str, Any]) -> bool:
    # open_clip builds a ModifiedResNet exactly when vision_cfg.layers is a list (see _build_vision_tower).
    vision = config.get("vision_cfg", {})
    return isinstance(vision.get("layers"), (list, tuple)) and not vision.get("timm_model_name")


def is_region_capable(name: str) -> bool:
    """True when `name` is an open_clip model whose image tower the region encoder can use."""
    config = _model_config(name)
    return config is not None and _config_is_modified_resnet(config)


def region_capable_models() -> list[str]:
    register_model_configs()
    return [name for name in open_clip.list_models() if is_region_capable(name)]


def check_model_name(name: str) -> dict[str, Any]:
    """The open_clip config of `name`, or a one-line error: close matches, or the supported family."""
    config = _model_config(name)
    if config is None:
        known = open_clip.list_models()
        by_lower = {k.lower(): k for k in known}
        close = [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=4, cutoff=0.5)]
        hint = f"did you mean {', '.join(close)}?" if close else f"region-capable models: {_supported_list()}"
        raise RegionclipError(f"--model {name}: no such open_clip model; {hint}")
    if not _config_is_modified_resnet(config):
        raise RegionclipError(
            f"--model {name}: its image tower is not a ModifiedResNet, and the region encoder needs one "
            f"(RoIAlign on a stride-16 ResNet map + attention pool); use one of: {_supported_list()}"
        )
    return config


def _supported_list() -> str:
    return ", ".join(n for n in region_capable_models() if not n.endswith("-quickgelu"))


def shipped_weights(name: str) -> Path | None:
    """The checkpoint shipped inside the package for `name` (the default world teacher), if any."""
    path = SHIPPED_WEIGHTS_DIR / f"{name}.pt"
    return path if path.is_file() else None


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip warns 'initialized randomly' when we build an architecture to load weights into."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _with_quick_gelu(name: str, quick_gelu: bool) -> str:
    """OpenAI's weights were trained with QuickGELU: name the `-quickgelu` twin so that checkpoints
    saved later record the activation their text tower really uses."""
    if quick_gelu and not name.endswith("-quickgelu") and _model_config(f"{name}-quickgelu") is not None:
        return f"{name}-quickgelu"
    return name


def _build(name: str, quick_gelu: bool) -> torch.nn.Module:
    with _quiet_open_clip():
        return open_clip.create_model(name, force_quick_gelu=quick_gelu)


def _is_torchscript_archive(path: Path) -> bool:
    # torch.save archives are zips too; only TorchScript ones carry code/ and constants.pkl.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


@dataclass
class _Weights:
    state_dict: dict[str, torch.Tensor]
    model_name: str | None  # the architecture the file names itself (our checkpoints only)
    metadata: dict[str, Any]
    quick_gelu: bool  # OpenAI-trained text towers (their archives, RegionCLIP's checkpoints)
    has_text_tower: bool = True
    notes: tuple[str, ...] = ()


def is_detectron2_regionclip(obj: object) -> bool:
    """The original RegionCLIP's released files: detectron2's {"model": {"backbone.…": …, …}}."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and any(
        isinstance(k, str) and k.startswith("backbone.") for k in obj["model"])


def _from_detectron2(model: dict, path: Path) -> _Weights:
    """The student image tower (`backbone.*`) as CLIP's `visual.*`, the text tower from `lang_encoder.*`.

    `teacher_backbone.*`, `offline_*` (the RPN) and `roi_heads.*` (detector heads) are not CLIP
    weights and are left out. Without `lang_encoder.*` (detector files) names cannot be embedded.
    """
    visual = {f"visual.{k[len('backbone.'):]}": v for k, v in model.items() if k.startswith("backbone.")}
    text = {k[len("lang_encoder."):]: v for k, v in model.items() if k.startswith("lang_encoder.")}
    notes = ()
    if not text:
        notes = (f"{path}: a RegionCLIP detectron2 checkpoint without a text tower (no lang_encoder.*): "
                 "its image tower is used; class names need --class-embeddings FILE",)
    return _Weights({**visual, **text}, None, {}, quick_gelu=True, has_text_tower=bool(text), notes=notes)


def _read_weights(path: Path) -> _Weights:
    if not path.is_file():
        raise RegionclipError(f"--weights {path}: no such file")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is how OpenAI ships CLIP
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise RegionclipError(f"{path}: a TorchScript archive that cannot be loaded ({error})".splitlines()[0]) from None
        state = {k: v for k, v in archive.state_dict().items() if k not in OPENAI_ARCHIVE_EXTRA_KEYS}
        return _Weights(state, None, {}, quick_gelu=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for files that are not checkpoints
        raise RegionclipError(
            f"{path}: not a PyTorch checkpoint ({type(error).__name__}); expected an open_clip/PyTorch "
            f"state dict, an OpenAI CLIP .pt archive or a regionclip checkpoint"
        ) from None
    if checkpoints.is_regionclip_checkpoint(obj):
        checkpoint = checkpoints.checkpoint_from_object(obj, path)
        if checkpoint.kind != "clip":
            raise RegionclipError(f"{path}: a regionclip '{checkpoint.kind}' checkpoint, not CLIP weights")
        return _Weights(checkpoint.state_dict, checkpoint.model, checkpoint.metadata, False)
    if is_detectron2_regionclip(obj):
        return _from_detectron2(obj["model"], path)
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise RegionclipError(f"{path}: holds no state dict of tensors (looked at the top level, 'state_dict' and 'model')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return _Weights(state, None, {}, False)


def _guess_model(state: dict[str, torch.Tensor]) -> str | None:
    """The open_clip name whose image tower has this state dict's shape (RN50, RN50x4, ...)."""
    signature = _state_signature(state)
    if signature is None:
        return None
    for name in open_clip.list_models():
        if not name.endswith("-quickgelu") and _vision_signature(open_clip.get_model_config(name)) == signature:
            return name
    return None


def _vision_signature(config: dict[str, Any]) -> tuple | None:
    vision = config.get("vision_cfg", {})
    if _config_is_modified_resnet(config):
        return ("resnet", config.get("embed_dim"), tuple(vision["layers"]), vision.get("width", 64))
    if isinstance(vision.get("layers"), int) and vision.get("patch_size"):
        return ("vit", config.get("embed_dim"), vision["layers"], vision.get("width"), vision["patch_size"])
    return None


def _state_signature(state: dict[str, torch.Tensor]) -> tuple | None:
    """The vision-tower shape of a CLIP state dict, comparable with `_vision_signature`."""
    try:
        if "visual.attnpool.positional_embedding" in state:
            layers = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
            )
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            return ("resnet", state["visual.attnpool.c_proj.weight"].shape[0], layers, width)
        if "visual.proj" in state:
            layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
            conv = state["visual.conv1.weight"]
            return ("vit", state["visual.proj"].shape[1], layers, conv.shape[0], conv.shape[-1])
    except (KeyError, IndexError):
        return None
    return None


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    """Name the architecture a state dict belongs to, for error messages."""
    signature = _state_signature(state)
    names = [
        name for name in open_clip.list_models()
        if not name.endswith("-quickgelu") and signature is not None
        and _vision_signature(open_clip.get_model_config(name)) == signature
    ]
    if names:
        return f"it looks like {' / '.join(names[:3])} (pass that as --model)"
    width = None
    if "text_projection" in state and state["text_projection"].ndim == 2:
        width = state["text_projection"].shape[1]
    elif signature is not None:
        width = signature[1]
    if width is not None:
        return f"its embedding width is {width} (1024 = RN50, 512 = RN101/ViT-B, 640 = RN50x4, 768 = RN50x16)"
    return "it does not look like an open_clip CLIP state dict"


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str,
               *, image_tower_only: bool = False) -> None:
    """Strict loading with errors a user can act on; tensors are cast to the model's dtypes.

    `image_tower_only`: the file holds no text side, which then keeps the architecture's values.
    """
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked") or k == "logit_scale"
                or (image_tower_only and not k.startswith("visual."))}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected"
        raise RegionclipError(f"{path}: weights do not fit --model {name}: {detail} ({counts}); {_looks_like(state)}")
    for key, target in expected.items():
        if key in state and state[key].shape != target.shape:
            raise RegionclipError(
                f"{path}: weights do not fit --model {name}: {key} is {list(state[key].shape)} in the file "
                f"but {list(target.shape)} in {name}; {_looks_like(state)}"
            )
    cast = {k: v.to(dtype=expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(cast, strict=False)


def _size_from(metadata: dict[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def load_clip(
    model: str | None = None,
    pretrained: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    random_init: bool = False,
) -> LoadedClip:
    """Build a region-capable CLIP from exactly one weight source.

    `model=None` means "the default": RN50, or the model named inside a regionclip checkpoint given
    as `weights`. Sources, in order: `weights` (a file), `pretrained` (an open_clip tag, downloaded
    by open_clip), the checkpoint shipped for `model` in the package, or `random_init=True` (tests
    and benchmarks only). Without any of them this is an error rather than a silently random model.
    """
    register_model_configs()
    if pretrained is not None and weights is not None:
        raise RegionclipError("give either --pretrained or --weights, not both")
    if random_init and (pretrained is not None or weights is not None):
        raise RegionclipError("random_init=True cannot be combined with --pretrained or --weights")
    device = torch.device(device)
    name = model or DEFAULT_MODEL

    if weights is None and pretrained is None and not random_init:
        weights = shipped_weights(name)
        if weights is None:
            check_model_name(name)
            raise RegionclipError(
                f"--model {name} has no weights here: pass --pretrained openai (downloads them; needs "
                f"internet) or --weights FILE (a local CLIP .pt / state dict / regionclip checkpoint)"
            )

    metadata: dict[str, Any] = {}
    has_text, notes = True, ()
    if weights is not None:
        path = Path(weights)
        loaded = _read_weights(path)
        if loaded.model_name is not None and loaded.model_name != name:
            if model is not None:
                raise RegionclipError(
                    f"{path}: a checkpoint of {loaded.model_name}, but --model {model} was asked for; "
                    f"drop --model or pass --model {loaded.model_name}"
                )
            name = loaded.model_name
        if model is None and loaded.model_name is None:
            name = _guess_model(loaded.state_dict) or name
        check_model_name(name)
        name = _with_quick_gelu(name, loaded.quick_gelu)
        clip = _build(name, quick_gelu=loaded.quick_gelu)
        _load_into(clip, loaded.state_dict, path, name, image_tower_only=not loaded.has_text_tower)
        metadata = loaded.metadata
        has_text, notes = loaded.has_text_tower, loaded.notes
        source = f"sha256:{file_sha256(path)[:16]}"
    elif pretrained is not None:
        check_model_name(name)
        clip, name = _create_pretrained(name, pretrained)
        source = f"pretrained:{pretrained}"
    else:
        check_model_name(name)
        clip = _build(name, quick_gelu=False)
        source = "random-init"

    clip = clip.to(device).eval()
    preprocess = getattr(clip.visual, "preprocess_cfg", {}) or {}
    mean = tuple(metadata.get("mean") or preprocess.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(metadata.get("std") or preprocess.get("std") or open_clip.OPENAI_DATASET_STD)
    return LoadedClip(
        model=clip,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        identity=f"{name}@{source}",
        embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
        image_size=int(clip.visual.image_size),
        mean=mean,
        std=std,
        input_min_size=_size_from(metadata, "input_min_size"),
        input_max_size=_size_from(metadata, "input_max_size"),
        device=device,
        has_text_tower=has_text,
        notes=notes,
    )


def _is_cached(cfg: dict[str, Any]) -> bool:
    """Whether open_clip would find these pretrained weights on disk without downloading."""
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hub = ""
        else:
            repo, filename = os.path.split(hub)  # "org/model/" names the repository's default file
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
                return True
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _reachable(host: str, timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _create_pretrained(name: str, tag: str) -> tuple[torch.nn.Module, str]:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        if Path(tag).is_file():
            raise RegionclipError(f"--pretrained {tag}: to load a local file, pass it with --weights {tag}")
        valid = ", ".join(tags) if tags else "none (use --weights FILE)"
        raise RegionclipError(f"--pretrained {tag}: not a pretrained tag of {name}; valid tags: {valid}")
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not _is_cached(cfg):
        host = "huggingface.co" if cfg.get("hf_hub") else urlsplit(cfg.get("url", "")).hostname or "huggingface.co"
        if not _reachable(host):
            raise RegionclipError(
                f"--model {name} --pretrained {tag}: the weights are not cached here and {host} cannot be "
                f"reached (offline?); download them on a connected machine and pass the file with --weights FILE")
    quick_gelu = bool(cfg.get("quick_gelu", False))
    name = _with_quick_gelu(name, quick_gelu)
    try:
        with _quiet_open_clip(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu), name
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RegionclipError(
            f"--model {name} --pretrained {tag}: downloading the weights failed ({reason[:200]}); "
            f"on a machine without internet, download the file elsewhere and pass it with --weights FILE"
        ) from None
