"""Text-to-audio backends: AudioLDM and AudioLDM 2 through diffusers' pipelines.

diffusers 0.42 ships both: ``AudioLDMPipeline`` (moved to the deprecated pipelines;
it still loads and runs, but receives no fixes after diffusers 0.33.1, so its
deprecation warning is silenced here on purpose) and ``AudioLDM2Pipeline`` (maintained).
The models are loaded from a hub id (cache only when ``HF_HUB_OFFLINE=1``) or from a
local folder written by ``save_pretrained`` (`--model DIR`), on CUDA in fp16 when
available, else on the CPU in fp32.

Prompts come from a TOML file (`load_prompts`; the package's
``resources/prompts.toml`` by default): several per class, sample `i` of a class uses
prompt ``i mod len``, and one negative prompt steers away from music, speech and
electronic noise. Each sample's initial latents come from its own CPU generator, so a
sample depends only on its seed, prompt and settings, not on its batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from rsctool.errors import ConfigError, DataError
from rsctool.generators import Generated, Request

#: Default model per backend (hub ids; a local folder works the same way).
DEFAULT_MODELS: dict[str, str] = {"audioldm": "cvssp/audioldm-s-full-v2",
                                  "audioldm2": "cvssp/audioldm2"}
#: Default classifier-free guidance per backend (AudioLDM 2 is trained for lower scales).
DEFAULT_GUIDANCE: dict[str, float] = {"audioldm": 7.5, "audioldm2": 3.5}
#: Rate of the AudioLDM vocoders (Hz); the pipeline's own value is used when loaded.
NATIVE_RATE = 16000


# --------------------------------------------------------------------------- prompts

def default_prompts_path() -> Path:
    """The prompt file shipped in the package."""
    return Path(str(resources.files("rsctool") / "resources" / "prompts.toml"))


def load_prompts(path: str | Path | None = None) -> tuple[dict[str, list[str]], str, str]:
    """Read a prompt file.

    Format: ``negative = "..."`` (optional) and a ``[prompts]`` table of
    ``class = ["prompt", ...]`` lists of non-empty strings.

    Returns:
        ``(prompts by class, negative prompt, sha256 of the file)``.

    Raises:
        DataError: missing, non-TOML or malformed file (names the file).
    """
    import tomllib

    p = Path(path) if path is not None else default_prompts_path()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError("prompt file not found", p) from None
    except OSError as e:
        raise DataError(f"cannot read prompt file ({e.strerror})", p) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"invalid TOML ({str(e).splitlines()[0]})", p) from None
    table = doc.get("prompts")
    if not isinstance(table, dict) or not table:
        raise DataError("needs a [prompts] table of class = [\"prompt\", ...] lists", p)
    prompts: dict[str, list[str]] = {}
    for label, items in table.items():
        if (not isinstance(items, list) or not items
                or not all(isinstance(s, str) and s.strip() for s in items)):
            raise DataError(f"prompts.{label} must be a non-empty list of non-empty strings", p)
        prompts[label] = [s.strip() for s in items]
    negative = doc.get("negative", "")
    if not isinstance(negative, str):
        raise DataError("`negative` must be a string", p)
    return prompts, negative.strip(), hashlib.sha256(raw).hexdigest()


def prompt_for(prompts: dict[str, list[str]], label: str, index: int) -> str:
    """Prompt of sample `index` of class `label` (round robin over the class's prompts)."""
    items = prompts[label]
    return items[index % len(items)]


# --------------------------------------------------------------------------- pipeline

@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers warnings and progress bars for a block.

    The AudioLDM deprecation notice, CLAP truncation notes and weight-loading bars
    would otherwise interleave with rsctool's own progress bar on stderr.
    """
    import warnings

    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    caught = warnings.catch_warnings()
    caught.__enter__()
    # e.g. diffusers' `torch_dtype` -> `dtype` rename: the old name works on every
    # supported diffusers version, the new one does not
    warnings.simplefilter("ignore", FutureWarning)
    # CLAP feature extractors with few mel bands warn about empty filters at load time;
    # AudioLDM 2 only uses the extractor to rank several waveforms per prompt (unused)
    warnings.filterwarnings("ignore", message="At least one mel filter has all zero")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    bars = (tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled())
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        caught.__exit__(None, None, None)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars[0]:
            tlog.enable_progress_bar()
        if bars[1]:
            dlog.enable_progress_bar()


def model_identity(model: str) -> str:
    """What identifies the weights in the output hash: a local folder is its resolved
    path plus a hash of its ``model_index.json``; a hub id is itself."""
    p = Path(model).expanduser()
    if p.is_dir():
        index = p / "model_index.json"
        digest = hashlib.sha256(index.read_bytes()).hexdigest()[:16] if index.exists() else ""
        return f"{p.resolve()}#{digest}"
    return model


def load_pipeline(version: str, model: str, device: str) -> Any:
    """Load an AudioLDM (``version="audioldm"``) or AudioLDM 2 pipeline on `device`.

    fp16 on CUDA (the models are trained in mixed precision; halves memory and time),
    fp32 on the CPU (fp16 convolutions are slow or unsupported there).

    Raises:
        ConfigError: a folder that is not a saved pipeline of that kind, or a hub id
            that cannot be loaded (offline and not cached, unknown repository).
    """
    import torch

    if version == "audioldm":
        from diffusers import AudioLDMPipeline as Pipeline
    elif version == "audioldm2":
        from diffusers import AudioLDM2Pipeline as Pipeline
    else:
        raise ConfigError(f"unknown text-to-audio backend {version!r}")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    p = Path(model).expanduser()
    local = p.is_dir()
    if not local and (model.startswith((".", "/", "~")) or p.suffix or model.count("/") > 1):
        raise ConfigError(f"{model}: no such folder (give a saved {version} pipeline "
                          "folder or a hub id like " + DEFAULT_MODELS[version] + ")",
                          field="model")
    if local and not (p / "model_index.json").exists():
        raise ConfigError(f"{p}: not a saved diffusers pipeline (no model_index.json)",
                          field="model")
    hint = (f"; without the hub use {{field:backend}} diffwave (trained on your dataset, "
            f"nothing to download) or {{field}} DIR (a saved {version} pipeline folder)")
    local_only = False
    if not local:
        from rsctool.hub import plan_load

        # asked first: an uncached id offline would otherwise retry for ~30 s, a line a try
        local_only, why = plan_load(model, "model_index.json")
        if why is not None:
            raise ConfigError(f"{{field}} {model}: cannot load the {version} pipeline: "
                              f"{why}{hint}", field="model")
    try:
        with _quiet_libraries():
            pipe = Pipeline.from_pretrained(str(p) if local else model, torch_dtype=dtype,
                                            local_files_only=local_only)
    except (OSError, ValueError) as e:
        # the library's first sentence, whole (a cut mid-word helps nobody)
        first = " ".join(str(e).split()) or type(e).__name__
        first = first.split(". ")[0].rstrip(".")
        where = "folder" if local else "hub id"
        raise ConfigError(f"{{field}} {model}: cannot load the {version} pipeline from this "
                          f"{where}: {first}{'' if local else hint}", field="model") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class AudioLDMBackend:
    """Text-to-audio generation with AudioLDM / AudioLDM 2.

    Args:
        version: ``audioldm`` or ``audioldm2``.
        model: hub id or local pipeline folder.
        device: ``cpu`` or ``cuda`` (already resolved).
        steps: denoising steps.
        guidance: classifier-free guidance scale (> 1 enables the negative prompt).
        seconds: length of the generated audio (s).
        negative_prompt: text the sampler is guided away from.
    """

    def __init__(self, version: str, model: str, *, device: str, steps: int, guidance: float,
                 seconds: float, negative_prompt: str):
        if version not in DEFAULT_MODELS:
            raise ConfigError(f"unknown text-to-audio backend {version!r}")
        self.name = version
        self.model = model
        self.device = device
        self.steps = steps
        self.guidance = guidance
        self.seconds = seconds
        self.negative_prompt = negative_prompt
        self._pipe: Any = None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = load_pipeline(self.name, self.model, self.device)
        return self._pipe

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.pipe.vocoder.config, "sampling_rate", NATIVE_RATE))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model,
                "model_id": model_identity(self.model), "steps": self.steps,
                "guidance": self.guidance, "negative_prompt": self.negative_prompt,
                "seconds": self.seconds}

    def generate(self, requests: list[Request]) -> list[Generated]:
        import torch

        if not requests:
            return []
        pipe = self.pipe
        prompts = [r.prompt or "" for r in requests]
        kwargs: dict[str, Any] = {}
        if self.guidance > 1 and self.negative_prompt:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(requests)
        # CPU generators: the same seed gives the same latents on every device.
        gens = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
        t0 = time.perf_counter()
        with _quiet_libraries(), torch.inference_mode():
            out = pipe(prompt=prompts, num_inference_steps=self.steps,
                       guidance_scale=self.guidance, audio_length_in_s=self.seconds,
                       num_waveforms_per_prompt=1, generator=gens, output_type="np",
                       **kwargs)
        each = (time.perf_counter() - t0) / len(requests)
        audios = out.audios
        rate = self.sample_rate
        return [Generated(wav=audios[i].reshape(-1), sample_rate=rate, seconds=each,
                          info={"prompt": r.prompt,
                                "negative_prompt": kwargs.get("negative_prompt", [None])[0]})
                for i, r in enumerate(requests)]
