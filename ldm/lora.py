"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685): attach, save, convert, load, fuse.

A LoRA adapter adds `ΔW = (alpha / r) · B A` to a frozen weight `W` (out, in), with `A` (r, in) and `B`
(out, r); for a convolution `A` is (r, in, k, k) and `B` (out, r, 1, 1). Adapters are attached through peft the
way diffusers does (`UNet2DConditionModel.add_adapter(LoraConfig(...))`).

Files. `pytorch_lora_weights.safetensors` holds diffusers' key format, the one
`StableDiffusionPipeline.save_lora_weights` writes from `get_peft_model_state_dict`:
`unet.<module>.lora_A.weight` / `lora_B.weight` and `text_encoder.<module>.lora_A.weight` / ..., with the
`LoraConfig` keywords (`r`, `lora_alpha`, `target_modules`) per component as JSON under the
`lora_adapter_metadata` key of the safetensors metadata, packed as `unet.r`, `unet.lora_alpha`, ... (diffusers'
`LORA_ADAPTER_METADATA_KEY`), so stock `load_lora_weights` rebuilds the exact config. The kohya layout
(kohya-ss sd-scripts `networks/lora.py`, read by AUTOMATIC1111 and ComfyUI) names each module by its dotted path
with `_` for `.`: `lora_unet_<path>.lora_down.weight` (= A), `.lora_up.weight` (= B), `.alpha` (a scalar), and
`lora_te_<path>` for the text encoder, with `ss_network_dim` / `ss_network_alpha` in the metadata.

Loading several adapters with scales s_i gives `W x + Σ_i s_i (alpha_i / r_i) B_i A_i x`; fusing writes
`W + Σ_i s_i (alpha_i / r_i) B_i A_i` into the weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS_NAME = "pytorch_lora_weights_kohya.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "text_encoder")  # diffusers' prefixes for StableDiffusionPipeline
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
FORMATS = ("diffusers", "kohya")

# Named groups of target modules (peft matches a name against the end of each module's dotted path).
UNET_TARGET_GROUPS = {
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),  # self- and cross-attention projections: diffusers' default
    "ff": ("ff.net.0.proj", "ff.net.2"),  # the transformer blocks' feed-forward
    "proj": ("proj_in", "proj_out"),  # in/out projections of each transformer
    "conv": ("conv1", "conv2", "conv_shortcut"),  # ResNet convolutions ("convolutions on request")
}
DEFAULT_UNET_TARGETS = ("attn",)
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def resolve_targets(names: Iterable[str]) -> list[str]:
    """Module names for `names`, where a group name (`attn`, `ff`, `proj`, `conv`) stands for its members."""
    targets: list[str] = []
    for name in names:
        for member in UNET_TARGET_GROUPS.get(name.strip(), (name.strip(),)):
            if member and member not in targets:
                targets.append(member)
    if not targets:
        raise ValueError("LoRA targets are empty; give module names or groups such as attn, ff, proj, conv.")
    return targets


def add_lora(model: torch.nn.Module, *, rank: int, alpha: float | None = None,
             targets: Sequence[str]) -> LoraConfig:
    """Freeze `model` and attach a trainable LoRA adapter ("default") to the modules named by `targets`.

    `model` is a diffusers `UNet2DConditionModel` or a transformers `CLIPTextModel`.
    B starts at zero (peft's default), so the adapted model starts equal to the base. Returns the config.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}.")
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=list(targets), init_lora_weights=True)
    model.requires_grad_(False)
    try:
        if hasattr(model, "load_lora_adapter"):  # diffusers' PeftAdapterMixin, as its training scripts do
            model.add_adapter(config)
        else:  # transformers' add_adapter wants a newer peft than diffusers does; this is what it calls
            inject_adapter_in_model(config, model, adapter_name="default")
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"cannot attach LoRA to {type(model).__name__}: {str(error).splitlines()[0]}") from None
    return config


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter weights of `model` (lora_A / lora_B of every adapted module)."""
    return [p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def _metadata_entry(config: LoraConfig) -> dict:
    """The `LoraConfig` keywords diffusers' loader rebuilds the adapter from."""
    targets = config.target_modules
    return {"r": config.r, "lora_alpha": config.lora_alpha,
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets}


def adapter_state_dict(models: dict[str, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) of the "default" adapters of `models` ({"unet": ..., "text_encoder": ...}).

    Keys are `<component>.<module>.lora_A.weight` etc. (diffusers' format); metadata maps each component to its
    `{"r", "lora_alpha", "target_modules"}`. Components without an adapter are left out.
    """
    state_dict: dict[str, torch.Tensor] = {}
    metadata: dict[str, dict] = {}
    for component, model in models.items():
        config = (getattr(model, "peft_config", None) or {}).get("default")
        if model is None or config is None:
            continue
        # SD-1 files name text-encoder modules from CLIPTextModel's `text_model`, which transformers 5 folds away.
        lead = "text_model." if component == "text_encoder" and not _has_module(model, "text_model") else ""
        for key, value in get_peft_model_state_dict(model, adapter_name="default").items():
            state_dict[f"{component}.{lead}{key}"] = value.detach().to("cpu", torch.float32).contiguous()
        metadata[component] = _metadata_entry(config)
    return state_dict, metadata


def save_lora(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict, *,
              lora_format: str = "diffusers", extra: dict[str, torch.Tensor] | None = None,
              extra_metadata: dict[str, str] | None = None) -> Path:
    """Write an adapter as safetensors in `lora_format` ("diffusers" or "kohya"); return `path`. `extra`
    tensors are stored beside the adapter's (kohya files: bundled new-token vectors, `ldm.new_tokens`), and
    `extra_metadata` entries beside the format's own (an LCM-LoRA's sampling facts, `ldm.lcm_lora`)."""
    if lora_format not in FORMATS:
        raise ValueError(f"LoRA format must be one of {', '.join(FORMATS)}, got {lora_format!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if lora_format == "kohya":
        tensors, file_metadata = to_kohya(state_dict, metadata)
    else:
        packed = {f"{c}.{k}": v for c, entry in metadata.items() for k, v in entry.items()}
        tensors, file_metadata = state_dict, {"format": "pt", METADATA_KEY: json.dumps(packed, sort_keys=True)}
    tensors = {**tensors, **(extra or {})}
    file_metadata = {**file_metadata, **(extra_metadata or {})}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=file_metadata)
    return path


def to_kohya(state_dict: dict[str, torch.Tensor], metadata: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Diffusers-format adapter → kohya layout: (tensors, safetensors metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)  # kind: "A.weight" | "B.weight"
        name = KOHYA_PREFIXES[component] + module.replace(".", "_")
        tensors[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        tensors[f"{name}.alpha"] = torch.tensor(float(metadata[component]["lora_alpha"]))
    unet = metadata.get("unet") or next(iter(metadata.values()))
    file_metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(unet["r"]),
                     "ss_network_alpha": str(unet["lora_alpha"]), "ss_base_model_version": "sd_v1",
                     "ldm_lora_targets": json.dumps({c: e["target_modules"] for c, e in metadata.items()})}
    return tensors, file_metadata


@dataclass
class LoraFile:
    """An adapter read from disk, per component: `state_dicts[c]` has peft keys `<module>.lora_A.weight` /
    `lora_B.weight` and `alphas[c][module]` the alpha of each adapted module."""

    path: Path
    state_dicts: dict[str, dict[str, torch.Tensor]]
    alphas: dict[str, dict[str, float]]

    def modules(self, component: str) -> list[str]:
        return sorted(self.alphas.get(component, {}))


def read_lora(path: str | Path, models: dict[str, torch.nn.Module]) -> LoraFile:
    """Read a diffusers- or kohya-format adapter; kohya names are resolved against `models`' module paths.

    Raises a one-sentence ValueError for a file that is not a LoRA or that does not fit `models`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LoRA file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            file_metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a LoRA file (not readable as safetensors: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}).") from None
    if any(key.startswith(tuple(KOHYA_PREFIXES.values())) and ".lora_down." in key for key in tensors):
        lora = _from_kohya(path, tensors, models)
    elif any(".lora_A." in key for key in tensors):
        lora = _from_diffusers(path, tensors, file_metadata)
    else:
        raise ValueError(f"{path} is not a LoRA file (no lora_A/lora_B or lora_down/lora_up weights).")
    _drop_folded_text_model(lora, models.get("text_encoder"))
    check_fits(lora, models)
    return lora


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _drop_folded_text_model(lora: LoraFile, text_encoder: torch.nn.Module | None) -> None:
    """Map SD-1 `text_model.<path>` module names onto a text encoder without that wrapper (transformers 5)."""
    if text_encoder is None or "text_encoder" not in lora.alphas or _has_module(text_encoder, "text_model"):
        return
    strip = lambda name: name.removeprefix("text_model.")  # noqa: E731
    lora.state_dicts["text_encoder"] = {strip(k): v for k, v in lora.state_dicts["text_encoder"].items()}
    lora.alphas["text_encoder"] = {strip(k): v for k, v in lora.alphas["text_encoder"].items()}


def _from_diffusers(path: Path, tensors: dict, file_metadata: dict) -> LoraFile:
    packed = json.loads(file_metadata.get(METADATA_KEY, "{}"))
    state_dicts: dict[str, dict] = {}
    alphas: dict[str, dict] = {}
    for key, value in tensors.items():
        component, rest = key.split(".", 1) if "." in key else ("", key)
        if component not in COMPONENTS:
            raise ValueError(f"{path}: key {key!r} names no unet/text_encoder component; not a LoRA for "
                             f"this pipeline.")
        state_dicts.setdefault(component, {})[rest] = value
        if ".lora_A." in rest:
            rank = value.shape[0]
            alpha = packed.get(f"{component}.lora_alpha", rank)  # no metadata: alpha = rank (scale 1)
            alphas.setdefault(component, {})[rest.split(".lora_A.")[0]] = float(alpha)
    return LoraFile(path, state_dicts, alphas)


def _from_kohya(path: Path, tensors: dict, models: dict[str, torch.nn.Module]) -> LoraFile:
    state_dicts: dict[str, dict] = {}
    alphas: dict[str, dict] = {}
    for component, prefix in KOHYA_PREFIXES.items():
        model = models.get(component)
        lead = "text_model." if component == "text_encoder" and model is not None and not _has_module(
            model, "text_model") else ""
        names = {(lead + n).replace(".", "_"): lead + n for n, _ in model.named_modules()} if model else {}
        for key, down in tensors.items():
            if not (key.startswith(prefix) and key.endswith(".lora_down.weight")):
                continue
            stem = key[: -len(".lora_down.weight")]
            module = names.get(stem[len(prefix):])
            if module is None:
                raise ValueError(f"{path}: LoRA module {stem!r} does not exist in this model's {component}.")
            up = tensors[f"{stem}.lora_up.weight"]
            state_dicts.setdefault(component, {}).update({f"{module}.lora_A.weight": down,
                                                          f"{module}.lora_B.weight": up})
            alpha = tensors.get(f"{stem}.alpha")
            alphas.setdefault(component, {})[module] = float(alpha) if alpha is not None else down.shape[0]
    return LoraFile(path, state_dicts, alphas)


def check_fits(lora: LoraFile, models: dict[str, torch.nn.Module]) -> None:
    """One-sentence ValueError unless every adapted module exists in `models` with matching shapes."""
    for component, state_dict in lora.state_dicts.items():
        model = models.get(component)
        if model is None:
            raise ValueError(f"{lora.path} adapts a {component} this pipeline does not have.")
        for module_name in lora.modules(component):
            try:
                weight = _base_layer(model.get_submodule(module_name)).weight
            except AttributeError:
                raise ValueError(f"{lora.path} does not fit this model: its {component} has no module "
                                 f"{module_name}.") from None
            down, up = state_dict[f"{module_name}.lora_A.weight"], state_dict[f"{module_name}.lora_B.weight"]
            if down.shape[1] != weight.shape[1] or up.shape[0] != weight.shape[0] or up.shape[1] != down.shape[0]:
                raise ValueError(f"{lora.path} does not fit this model: {component}.{module_name} is "
                                 f"{tuple(weight.shape)} but the adapter is {tuple(up.shape)} x "
                                 f"{tuple(down.shape)}.")


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def delta_weight(down: torch.Tensor, up: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """`scale · B A` reshaped to a weight of `shape` (linear (out, in) or conv (out, in, k, k))."""
    return scale * (up.flatten(1).float() @ down.flatten(1).float()).reshape(shape)


def _uniform_with_pattern(values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(the most common value, {module: value} for the modules that differ): peft's r / rank_pattern form."""
    counts: dict[float, int] = {}
    for value in values.values():
        counts[value] = counts.get(value, 0) + 1
    common = max(counts, key=counts.get)
    return common, {module: value for module, value in values.items() if value != common}


def _attach(model: torch.nn.Module, lora: LoraFile, component: str, adapter_name: str) -> None:
    """Inject the adapter `adapter_name` for `component` of `lora` into `model` and load its weights."""
    state_dict = lora.state_dicts[component]
    ranks = {m: state_dict[f"{m}.lora_A.weight"].shape[0] for m in lora.modules(component)}
    rank, rank_pattern = _uniform_with_pattern(ranks)
    alpha, alpha_pattern = _uniform_with_pattern(lora.alphas[component])
    config = LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=lora.modules(component),
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    with warnings.catch_warnings():  # a second adapter is what we want: "Already found a `peft_config`"
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    unexpected = [key for key in result.unexpected_keys if ".lora_" in key]
    if unexpected:
        raise ValueError(f"{lora.path} does not fit this model: {len(unexpected)} adapter weights have no "
                         f"place in its {component}, e.g. {unexpected[0]}.")


def _activate(model: torch.nn.Module, scales: dict[str, float]) -> None:
    """Run every adapter in `scales` at once, adapter `n` at scale `scales[n]` (times its alpha / r)."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(list(scales), inference_mode=True)
            for name, scale in scales.items():
                module.set_scale(name, scale)


def load_loras(models: dict[str, torch.nn.Module], specs: Sequence[tuple[str | Path, float]]) -> list[dict]:
    """Attach the adapters `specs` = [(path, scale), ...] to `models` ({"unet": ..., "text_encoder": ...})
    and run them together; return one record `{"path", "sha256", "scale"}` per adapter (for manifests)."""
    records = []
    scales: dict[str, dict[str, float]] = {component: {} for component in models}
    for index, (path, scale) in enumerate(specs):
        lora = read_lora(path, models)
        name = f"lora{index}"
        for component in lora.state_dicts:
            _attach(models[component], lora, component, name)
            scales[component][name] = float(scale)
        records.append({"path": str(path), "sha256": file_sha256(path), "scale": float(scale)})
    for component, model in models.items():
        if scales[component]:
            _activate(model, scales[component])
    return records


@torch.no_grad()
def fuse_loras(models: dict[str, torch.nn.Module], specs: Sequence[tuple[str | Path, float]]) -> list[dict]:
    """Add `Σ scale · (alpha / r) · B A` of each adapter in `specs` into the weights of `models` (no peft
    layers are left behind); return the adapters' records as `load_loras` does."""
    records = []
    for path, scale in specs:
        lora = read_lora(path, models)
        for component, state_dict in lora.state_dicts.items():
            model = models[component]
            for module_name in lora.modules(component):
                down = state_dict[f"{module_name}.lora_A.weight"]
                weight = _base_layer(model.get_submodule(module_name)).weight
                factor = scale * lora.alphas[component][module_name] / down.shape[0]
                delta = delta_weight(down, state_dict[f"{module_name}.lora_B.weight"], factor, weight.shape)
                weight.add_(delta.to(weight.dtype))
        records.append({"path": str(path), "sha256": file_sha256(path), "scale": float(scale)})
    return records


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`PATH[:SCALE]` → (path, scale). The text after the last ':' is a scale only if it parses as a finite
    float, so paths with ':' in them stay whole; scale defaults to 1."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            scale = None
        if scale is not None:
            if not math.isfinite(scale):
                raise ValueError(f"--lora {spec!r}: the scale must be a finite number, got {tail!r}.")
            return head, scale
        if not Path(spec).exists() and Path(head).exists():
            raise ValueError(f"--lora {spec!r}: the scale {tail!r} is not a number.")
    return spec, 1.0
