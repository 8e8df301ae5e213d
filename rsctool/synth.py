"""`rsctool synth`: synthetic minority-class breathing cycles, and their use in training.

Backends (`rsctool.generators`): ``audioldm`` (default) and ``audioldm2`` generate
from text prompts (`--prompts FILE`, several per class); ``diffwave`` trains a
mel-conditioned DiffWave vocoder on the dataset's real train cycles (once; resumable;
recorded under ``[vocoders.NAME]``) and re-synthesises perturbed mels of real cycles of
the requested class. Every sample is post-processed alike: resampled to the project
rate, cropped or padded to the cycle length, faded in and out, at its own level (real
cycles are not normalised either; diffwave re-synthesises at the source cycle's level). With
`--min-confidence P` a trained run of the project scores each sample and only those it
assigns to their intended class with probability >= P are kept.

Output folder (``.rsctool/synthetic/NAME`` unless `--out`)::

    crackle/901_00000_Syn_sc_audioldm.wav  .txt     one ICBHI-format recording per sample
    crackle/ICBHI_challenge_train_test.txt          all of the folder's samples: train
    annotations/crackle.txt                         stem, start, end, crackles, wheezes
    manifest.jsonl                                  DESIGN.md fields, source = synthetic
    generation_summary.json                         settings, seeds, counts, s/sample
    rejected.jsonl                                  samples the quality filter dropped

so `rsctool.data.icbhi.read_icbhi(OUT / "crackle")` reads a class folder back. File
stems follow the ICBHI pattern ``<patient>_<index>_<site>_<mode>_<device>`` with the
patient field a class code (900 normal, 901 crackle, 902 wheeze, 903 both), the
sample index, site ``Syn`` and the backend as device.

Sample `i` of class `c` is a pure function of ``(--seed, c, i)`` and the settings, so an
interrupted run continues from the first missing sample, re-running with the same
options is a no-op, and a larger `--n` later extends a set instead of starting over.

Training (`rsctool train --synthetic NAME ...`) calls `rsctool.data.synthetic.mix_synthetic`:
synthetic cycles join the training split only (never validation or test), selected by
`select_synthetic` (`--max-synthetic-per-class`, `--synthetic-ratio`); the run stores the
list of ids used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rsctool.console import StepProgress, get_state, info, print_json, warn
from rsctool.data.icbhi import SYNTHETIC_SITE
from rsctool.data.manifest import ICBHI_CLASSES, Cycle, icbhi_label
from rsctool.errors import ConfigError, DataError
from rsctool.eta import (
    SAMPLE_OVERHEAD_BYTES,
    RateMeter,
    SynthEstimate,
    SynthTooLarge,
    check_synth_size,
    free_bytes,
    wav_bytes,
)
from rsctool.generators import BACKENDS
from rsctool.locks import hold_record, releasing
from rsctool.utils import atomic_write_json, atomic_write_text, params_hash

if TYPE_CHECKING:
    from rsctool.project import Project

#: Patient field of synthetic file names, per class (ICBHI patient ids are 101-226).
CLASS_CODES: dict[str, int] = {"normal": 900, "crackle": 901, "wheeze": 902, "both": 903}
#: Site and mode fields of synthetic file names.
SITE, MODE = SYNTHETIC_SITE, "sc"
#: Classes made when neither --classes nor --balance says otherwise.
DEFAULT_CLASSES: tuple[str, ...] = ("crackle", "wheeze", "both")
DEFAULT_N = 100
SPLIT_FILE = "ICBHI_challenge_train_test.txt"
#: Bumped when a change here changes the samples a given set of options makes.
SYNTH_VERSION = 1


# --------------------------------------------------------------------------- options

@dataclass
class SynthOptions:
    """Resolved options of one `synth` invocation (stored in the summary).

    Attributes:
        backend: ``audioldm|audioldm2|diffwave``.
        classes: ICBHI classes to make (None: crackle, wheeze, both; with `balance`
            the plan's classes that need samples).
        n: samples per class (None: 100, or the plan with `balance`).
        balance: per-class counts from the analyze report's synthesis plan.
        name: set name in the project (None: reuse a set made with the same options,
            else the backend name plus a counter).
        out: output folder (None: ``.rsctool/synthetic/NAME``).
        dataset: dataset in the project (None: the last analysed).
        seed: seeds every sample (see `generators.sample_seed`).
        sample_rate: Hz of the written files (the training rate).
        seconds: cycle length (s); None: 8 s for the text-to-audio backends, the
            (stretched) source cycle's length for diffwave.
        max_seconds: diffwave: longest source excerpt re-synthesised (s).
        peak: peak level after normalisation (0, the default: keep the generator's level,
            as the real cycles keep theirs).
        fade_ms: fade in/out length (ms).
        batch_size: samples per generator call (None: 4 on CUDA, 1 on CPU).
        model: text-to-audio model (hub id or folder; None: the backend's default).
        prompts: prompt TOML file (None: the packaged one).
        steps: denoising steps (text-to-audio).
        guidance: classifier-free guidance (None: 7.5 AudioLDM, 3.5 AudioLDM 2).
        negative_prompt: overrides the prompt file's negative prompt.
        vocoder: diffwave: vocoder record name (None: ``diffwave-DATASET``).
        vocoder_size: ``base`` (30 layers, 64 channels, 80 mels, hop 256) or ``tiny``.
        vocoder_layers, vocoder_channels: override the size's residual layers/channels.
        vocoder_steps, vocoder_batch_size, vocoder_segment_frames, vocoder_lr,
            vocoder_checkpoint_every: vocoder training (`VocoderTrainOptions`).
        sampler: ``fast`` (6 steps) or ``full`` (all 50 training steps).
        stretch, mel_noise, gain_db: diffwave mel perturbation (`perturb_mel`).
        min_confidence: keep only samples the filter run gives their class with at
            least this probability (None: no filter).
        filter_run: run that scores samples (None: the last finished run).
        max_tries: with a filter, give up on a class after n * max_tries samples.
        force: regenerate a set made with other options (its folder is deleted).
        new: make a new set even if one was made with the same options (without
            `name`, the same options find their set again: resumed or a no-op).
        yes: go ahead with a job estimated above the bounds of `rsctool.eta`
            (24 h, 1,000,000 samples, the free disk space).
    """

    backend: str = "audioldm"
    classes: list[str] | None = None
    n: int | None = None
    balance: bool = False
    name: str | None = None
    out: str | None = None
    dataset: str | None = None
    seed: int = 0
    sample_rate: int = 16000
    seconds: float | None = None
    max_seconds: float = 8.0
    peak: float = 0.0
    fade_ms: float = 10.0
    batch_size: int | None = None
    model: str | None = None
    prompts: str | None = None
    steps: int = 50
    guidance: float | None = None
    negative_prompt: str | None = None
    vocoder: str | None = None
    vocoder_size: str = "base"
    vocoder_layers: int | None = None
    vocoder_channels: int | None = None
    vocoder_steps: int = 50_000
    vocoder_batch_size: int = 16
    vocoder_segment_frames: int = 62
    vocoder_lr: float = 2e-4
    vocoder_checkpoint_every: int = 1000
    sampler: str = "fast"
    stretch: float = 0.0
    mel_noise: float = 0.0
    gain_db: float = 0.0
    min_confidence: float | None = None
    filter_run: str | None = None
    max_tries: int = 4
    force: bool = False
    new: bool = False
    yes: bool = False

    def validate(self) -> SynthOptions:
        """Check what needs no project; returns a copy with classes de-duplicated."""
        o = dataclasses.replace(self, classes=None if self.classes is None else
                                list(dict.fromkeys(self.classes)))
        if o.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, "
                              f"got {o.backend!r}")
        for c in o.classes or []:
            if c not in ICBHI_CLASSES:
                raise ConfigError(f"--classes: unknown class {c!r} (synth makes the ICBHI "
                                  f"classes {', '.join(ICBHI_CLASSES)})")
        if o.classes is not None and not o.classes:
            raise ConfigError("--classes: no class given")
        if o.n is not None and (isinstance(o.n, bool) or not isinstance(o.n, int) or o.n < 1):
            raise ConfigError(f"--n must be an integer >= 1 (samples per class), got {o.n!r}")
        if o.n is not None and o.balance:
            raise ConfigError("--n and --balance exclude each other (--balance takes the "
                              "counts from the analyze report's synthesis plan)")
        checks = [("--sample-rate", o.sample_rate >= 1000), ("--steps", o.steps >= 1),
                  ("--max-seconds", o.max_seconds > 0), ("--peak", 0 <= o.peak <= 1),
                  ("--fade-ms", o.fade_ms >= 0), ("--max-tries", o.max_tries >= 1),
                  ("--stretch", 0 <= o.stretch < 1), ("--mel-noise", o.mel_noise >= 0),
                  ("--gain-db", o.gain_db >= 0)]
        if o.seconds is not None:
            checks.append(("--seconds", o.seconds > 0))
        if o.guidance is not None:
            checks.append(("--guidance", o.guidance >= 0))
        if o.batch_size is not None:
            checks.append(("--batch-size", o.batch_size >= 1))
        for flag, ok in checks:
            if not ok:
                raise ConfigError(f"{flag}: value out of range ({_option_value(o, flag)!r})")
        if o.min_confidence is not None and not 0 < o.min_confidence <= 1:
            raise ConfigError(f"--min-confidence must be in (0, 1], got {o.min_confidence}")
        if o.filter_run is not None and o.min_confidence is None:
            raise ConfigError("--filter-run needs --min-confidence (the probability a "
                              "sample's class must reach to be kept)")
        if o.sampler not in ("fast", "full"):
            raise ConfigError(f"--sampler must be fast or full, got {o.sampler!r}")
        return o


def _option_value(o: SynthOptions, flag: str) -> Any:
    return getattr(o, flag.lstrip("-").replace("-", "_"), None)


@dataclass
class SynthResult:
    """What `run` did.

    Attributes:
        name: set name in the project.
        dir: output folder.
        counts: kept samples per class (in the set, not only made this time).
        made: samples written by this invocation.
        rejected: samples dropped by the quality filter (in the set).
        skipped: nothing to do (a finished set with the same options).
        seconds_per_sample: mean generation time over the set's samples.
        summary: the generation_summary.json document.
    """

    name: str
    dir: Path
    counts: dict[str, int]
    made: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    seconds_per_sample: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def _check_removable(out: Path) -> None:
    """``--force`` deletes a synthetic set's folder: only when it is missing, empty or
    holds what synth writes (its manifest or summary). A user's folder given as ``--out``
    by mistake is refused (ConfigError), never emptied."""
    if out.is_dir() and any(out.iterdir()) and not (
            (out / "manifest.jsonl").is_file() or (out / "generation_summary.json").is_file()):
        raise ConfigError(f"--force would delete {out}, which is not a synth output folder "
                          "(no manifest.jsonl); choose another --out")


def _remove_synth_folder(out: Path) -> None:
    _check_removable(out)
    shutil.rmtree(out)


def stem_for(label: str, index: int, backend: str) -> str:
    """ICBHI-style file stem of sample `index` of class `label` (``901_00007_Syn_sc_diffwave``)."""
    return f"{CLASS_CODES[label]}_{index:05d}_{SITE}_{MODE}_{backend}"


def cycle_id(set_name: str, label: str, index: int, backend: str) -> str:
    """Manifest id of a synthetic sample; the set name keeps it apart from real ids."""
    return f"{set_name}:{stem_for(label, index, backend)}"


def _flags(label: str) -> tuple[int, int]:
    return int(label in ("crackle", "both")), int(label in ("wheeze", "both"))


def _dataset(project: Project, name: str | None, required: bool) -> tuple[str | None, dict | None,
                                                                       list[Cycle]]:
    """The dataset record and its cycles, or (None, None, []) when optional and absent."""
    from rsctool.datasets import load_dataset_cycles, pick_dataset

    if name is None and not project.section("datasets") and not required:
        return None, None, []
    ds_name, record = pick_dataset(project, name)
    return ds_name, record, load_dataset_cycles(project, record)


def _plan_counts(project: Project, ds_name: str, record: dict) -> dict[str, int]:
    """The synthesis plan of the analyze report of dataset `ds_name`."""
    path = project.abs(record["report"]) if record.get("report") else None
    if path is None or not path.exists():
        raise ConfigError(f"--balance: dataset {ds_name!r} has no analyze report "
                          "(re-run `rsctool analyze`)")
    try:
        plan = json.loads(path.read_text(encoding="utf-8")).get("synthesis_plan") or {}
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable analyze report ({e})", path) from None
    return {str(k): int(v) for k, v in plan.items()}


def _resolve_counts(opts: SynthOptions, project: Project, ds_name: str | None,
                    record: dict | None) -> dict[str, int]:
    """``{class: samples}`` to reach, in class order."""
    if opts.balance:
        if ds_name is None or record is None:
            raise ConfigError("--balance needs an analysed dataset (run `rsctool analyze`)")
        plan = _plan_counts(project, ds_name, record)
        classes = opts.classes or [c for c in ICBHI_CLASSES if plan.get(c, 0) > 0]
        counts = {c: plan.get(c, 0) for c in classes if plan.get(c, 0) > 0}
        if not counts:
            raise ConfigError(f"--balance: the synthesis plan of dataset {ds_name!r} needs no "
                              f"samples for {', '.join(classes)} (already balanced)")
        return counts
    classes = opts.classes or list(DEFAULT_CLASSES)
    return dict.fromkeys(classes, opts.n or DEFAULT_N)


def _default_filter_run(project: Project) -> str:
    runs = project.section("runs")
    done = [n for n, r in runs.items() if r.get("status") == "done"]
    if not done:
        raise ConfigError("--min-confidence needs a trained classifier to score samples: "
                          "pass --filter-run RUN (the project has no finished run; "
                          "train one with `rsctool train`)")
    return done[-1]


class QualityFilter:
    """Scores synthetic samples with a trained run, fed exactly like in training.

    `confidence(wav, rate, label)` is the run's probability of class `label` for the
    waveform: resampled to the run's rate, padded (repeat) or cropped to its clip length,
    Kaldi fbank, the run's normalisation; multilabel runs turn their crackle/wheeze
    sigmoids into the four class probabilities.
    """

    def __init__(self, project: Project, run: str, min_confidence: float, device: str):
        from rsctool.data.manifest import file_sha256
        from rsctool.runs import load_run

        self.run = run
        self.min_confidence = min_confidence
        self.device = device
        self.loaded = load_run(project, run, "best", device)
        self.sha256 = file_sha256(self.loaded.checkpoint)

    def check_classes(self, labels: Sequence[str]) -> None:
        missing = [c for c in labels if c not in self.loaded.classes]
        if missing:
            raise ConfigError(f"--filter-run {self.run}: the run does not predict "
                              f"{', '.join(missing)} (its classes: "
                              f"{', '.join(self.loaded.classes)})")

    def identity(self) -> dict[str, Any]:
        return {"run": self.run, "checkpoint_sha256": self.sha256,
                "min_confidence": self.min_confidence}

    def confidence(self, wav: Any, sample_rate: int, label: str, cycle: Cycle) -> float:
        import numpy as np
        import torch

        from rsctool.audio import pad_or_crop, resample
        from rsctool.features import fbank

        lr = self.loaded
        clip = lr.clip
        x = resample(np.asarray(wav, dtype=np.float32), sample_rate, clip.sample_rate)
        x = pad_or_crop(x, clip.num_samples, clip.sample_rate, clip.pad_mode)
        feats = fbank(torch.from_numpy(x), clip.fbank)
        feats = (feats - clip.fbank.mean) / (2.0 * clip.fbank.std)
        meta = None
        if lr.config.needs_metadata and lr.encoder is not None:
            meta = {k: v.to(self.device) for k, v in lr.encoder.encode([cycle]).items()}
        with torch.no_grad():
            logits = lr.model(feats.to(self.device), meta)["logits"].float().cpu()
        if lr.task == "multilabel":
            c, w = torch.sigmoid(logits[0]).tolist()
            probs = {"normal": (1 - c) * (1 - w), "crackle": c * (1 - w),
                     "wheeze": (1 - c) * w, "both": c * w}
            return float(probs[label])
        return float(torch.softmax(logits[0], -1)[lr.classes.index(label)])


# --------------------------------------------------------------------------- vocoder

def ensure_vocoder(project: Project, opts: SynthOptions, ds_name: str, record: dict,
                   train_cycles: Sequence[Cycle], device: str, progress: bool,
                   log: Callable[[str], None]) -> tuple[str, Path]:
    """The DiffWave vocoder of `ds_name`: trained now (or resumed, or extended to more
    steps) unless the project already records one trained to `vocoder_steps`.

    Returns:
        ``(vocoder name, checkpoint path)``.
    """
    from rsctool.generators.diffwave import (
        AudioStore,
        DiffWaveConfig,
        VocoderTrainer,
        VocoderTrainOptions,
    )

    name = opts.vocoder or f"diffwave-{ds_name}"
    cfg = DiffWaveConfig.sized(opts.vocoder_size, residual_layers=opts.vocoder_layers,
                               residual_channels=opts.vocoder_channels,
                               sample_rate=opts.sample_rate)
    topts = VocoderTrainOptions(steps=opts.vocoder_steps, batch_size=opts.vocoder_batch_size,
                                segment_frames=opts.vocoder_segment_frames, lr=opts.vocoder_lr,
                                checkpoint_every=opts.vocoder_checkpoint_every, seed=opts.seed)
    topts.validate()
    rec = project.get("vocoders", name)
    folder = project.record_dir("vocoders", name, rec)
    ckpt = folder / "last.safetensors"
    if rec is not None:
        try:
            old = DiffWaveConfig.from_dict(rec.get("config") or {})
        except (ConfigError, TypeError):
            old = None
        if (old != cfg or rec.get("dataset") != ds_name
                or rec.get("dataset_sha256") != record.get("sha256")):
            raise ConfigError(f"vocoder {name!r} was trained with another architecture, rate "
                              "or dataset; pass --vocoder NEW_NAME to train a new one")
        if rec.get("status") == "done" and int(rec.get("step", 0)) >= topts.steps \
                and ckpt.exists():
            return name, ckpt
    if not train_cycles:
        raise ConfigError(f"dataset {ds_name!r} has no real train cycles to train the "
                          "vocoder on")
    todo = topts.steps - (int(rec.get("step", 0)) if rec else 0)
    if device == "cpu" and cfg.residual_layers * cfg.residual_channels >= 30 * 64 \
            and todo > 100:
        # measured: ~2 min per step of batch 16 on a 2-core CPU (docs/synth.md)
        warn(f"training the {cfg.residual_layers}-layer DiffWave vocoder on the CPU takes "
             f"minutes per step ({todo} steps to go); use a GPU (--device cuda), or "
             "--vocoder-size tiny / fewer --vocoder-steps for a trial")
    log(f"vocoder {name!r}: reading {len(train_cycles)} real train cycles")
    store = AudioStore.build(folder / "audio", list(train_cycles), cfg.sample_rate)
    trainer = VocoderTrainer(cfg, topts, store, folder, device)
    if ckpt.exists():
        trainer.restore(ckpt)
        log(f"vocoder {name!r}: resuming at step {trainer.step} of {topts.steps}")
    project.update_record(
        "vocoders", name, backend="diffwave", dataset=ds_name,
        dataset_sha256=record.get("sha256"), config=cfg.to_dict(), dir=project.rel(folder),
        checkpoint=project.rel(ckpt), steps=topts.steps, step=trainer.step, status="running",
        parameters=trainer.model.num_parameters(), device=device,
        training={k: v for k, v in asdict(topts).items() if k != "extra"})
    bar = StepProgress(progress, f"vocoder {name}", topts.steps, trainer.step)
    try:
        summary = trainer.fit(on_step=lambda step, loss: bar.update(loss=loss))
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            project.update_record("vocoders", name, status="interrupted", step=trainer.step)
        raise
    finally:
        bar.close()
    done = max(1, summary["trained_steps"])
    project.update_record("vocoders", name, status="done", step=trainer.step,
                          loss=summary["loss"], seconds=round(trainer.seconds, 3),
                          seconds_per_step=round(trainer.seconds / max(1, trainer.step), 6))
    log(f"vocoder {name!r}: trained to step {trainer.step} ({summary['trained_steps']} steps "
        f"now, {summary['seconds'] / done:.3g} s/step overall), loss {summary['loss']}")
    return name, ckpt


# --------------------------------------------------------------------------- outputs

class _Rejected:
    """``rejected.jsonl``: samples the quality filter dropped (so a resume skips them)."""

    def __init__(self, path: Path):
        self.path = path
        self.items: dict[tuple[str, int], dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    d = json.loads(line)
                    self.items[(d["label"], int(d["index"]))] = d
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line: that sample is simply made again
        self._fh = None

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.items

    def add(self, item: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # rewrite the good lines first: drops a torn tail before appending
            atomic_write_text(self.path, "".join(json.dumps(d) + "\n"
                                                 for d in self.items.values()))
            self._fh = self.path.open("a", encoding="utf-8")
        self.items[(item["label"], int(item["index"]))] = item
        self._fh.write(json.dumps(item) + "\n")
        self._fh.flush()

    def counts(self) -> Counter:
        return Counter(label for label, _ in self.items)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _write_indexes(out: Path, cycles: Sequence[Cycle]) -> None:
    """Per-class split files and batch annotation files for the samples in `cycles`."""
    by_label: dict[str, list[Cycle]] = {}
    for c in sorted(cycles, key=lambda c: c.id):
        by_label.setdefault(c.label, []).append(c)
    for label, items in by_label.items():
        # one split file per class folder: the ICBHI reader checks that every name in
        # it exists in the folder it reads
        atomic_write_text(out / label / SPLIT_FILE,
                          "".join(f"{c.recording}\ttrain\n" for c in items))
        atomic_write_text(out / "annotations" / f"{label}.txt", "".join(
            f"{c.recording}\t{c.start:.3f}\t{c.end:.3f}\t{c.crackle}\t{c.wheeze}\n"
            for c in items))


def _summary(name: str, opts: SynthOptions, backend_info: dict[str, Any],
             counts: dict[str, int], cycles: Sequence[Cycle], rejected: Counter,
             prompts: dict[str, list[str]] | None, extra: dict[str, Any]) -> dict[str, Any]:
    from rsctool import __version__

    per: dict[str, list[Cycle]] = {c: [] for c in counts}
    for c in cycles:
        per.setdefault(c.label, []).append(c)
    secs = {k: [float(c.generator.get("seconds", 0.0)) for c in v] for k, v in per.items()}
    all_secs = [s for v in secs.values() for s in v]
    return {
        "name": name,
        "backend": opts.backend,
        "model": backend_info.get("model"),
        "settings": backend_info,
        "prompts": {c: prompts.get(c, []) for c in counts} if prompts else None,
        "negative_prompt": backend_info.get("negative_prompt"),
        "steps": backend_info.get("steps"),
        "guidance": backend_info.get("guidance"),
        "seed": opts.seed,
        "seeds": {k: [c.generator["seed"] for c in sorted(v, key=lambda c: c.id)]
                  for k, v in per.items()},
        "requested": counts,
        "counts": {k: len(v) for k, v in per.items()},
        "rejected": dict(rejected),
        "seconds_per_sample": {**{k: (sum(v) / len(v) if v else None)
                                  for k, v in secs.items()},
                               "all": sum(all_secs) / len(all_secs) if all_secs else None},
        "sample_rate": opts.sample_rate,
        "options": asdict(opts),
        "rsctool": __version__,
        **extra,
    }


# --------------------------------------------------------------------------- run

def _find_set(project: Project, opts: SynthOptions, gen_hash: str) -> tuple[str | None,
                                                                        dict | None]:
    sets = project.section("synthetic")
    if opts.new and opts.name is not None and opts.name in sets:
        raise ConfigError(f"--new: synthetic set {opts.name!r} exists; give a new --name or "
                          "drop --name for a BACKEND-N name")
    if opts.name is not None:
        return opts.name, sets.get(opts.name)
    if opts.new:
        return None, None
    for name, rec in reversed(list(sets.items())):
        if rec.get("gen_hash") == gen_hash:
            return name, rec
    return None, None


@releasing  # the set's lock (one writer per set), however `run` ends
def run(project: Project, opts: SynthOptions, *, device: str = "auto", progress: bool = False,
        log: Callable[[str], None] | None = None) -> SynthResult:
    """Generate (or resume, extend, or skip) a synthetic set and record it in the project.

    Under a launcher with several processes (``torchrun``/``accelerate launch -m rsctool
    synth ...``) the processes share out the sample indices (`_generate_sharded`): each
    writes its own files and manifest part, and after a barrier the main process merges
    one manifest, writes the indexes and summary and records the set; only the main
    process writes the project file.
    """
    from rsctool.devices import resolve_device
    from rsctool.distributed import setup, sync_project

    log = log or (lambda msg: None)
    opts = opts.validate()
    dev = resolve_device(device)
    dist = setup(dev)
    if dist.distributed:
        dev = dist.device
        if not dist.is_main:
            log, progress = (lambda msg: None), False
    dist.barrier()  # every process has read the project before the main one writes it
    if opts.name:  # fail fast, before a model is loaded
        hold_record(project, "synthetic", opts.name, dist)
    text = opts.backend in ("audioldm", "audioldm2")
    ds_name, ds_record, cycles = _dataset(project, opts.dataset, required=not text)
    counts = _resolve_counts(opts, project, ds_name, ds_record)
    _check_before_loading(project, opts, counts, ds_name, ds_record, cycles, text)
    qf = None
    if opts.min_confidence is not None:
        run_name = opts.filter_run or _default_filter_run(project)
        qf = QualityFilter(project, run_name, opts.min_confidence, dev)
        qf.check_classes(list(counts))

    extra: dict[str, Any] = {"dataset": ds_name}
    if text:
        backend, prompts, seconds = _text_backend(opts, counts, dev, extra)
    else:
        assert ds_name is not None and ds_record is not None
        backend, seconds = _diffwave_backend(project, opts, counts, ds_name, ds_record,
                                             cycles, dev, dist, progress, log, extra)
        prompts = None
    described = backend.describe()
    gen_hash = params_hash(_gen_params(opts, counts, described, text, ds_name, extra, qf))

    name, rec = _find_set(project, opts, gen_hash)
    done = _finished_set(project, opts, counts, name, rec, gen_hash)
    if done is not None:
        return done
    if text:
        backend.pipe  # noqa: B018 - load the model now: a bad --model fails before any write
    name, out = _claim_set(project, opts, dist, name=name, rec=rec, gen_hash=gen_hash,
                           described=described, ds_name=ds_name, counts=counts, dev=dev,
                           extra=extra, qf=qf)
    sync_project(project, dist)

    batch_size = opts.batch_size or (4 if dev.startswith("cuda") and text else 1)
    if dist.distributed:
        return _generate_sharded(
            project, opts, dist, name=name, out=out, counts=counts, backend=backend,
            described=described, prompts=prompts, qf=qf, cycles=cycles, seconds=seconds,
            batch_size=batch_size, extra=extra, gen_hash=gen_hash, dev=dev,
            progress=progress)
    return _generate(project, opts, name=name, out=out, counts=counts, backend=backend,
                     described=described, prompts=prompts, qf=qf, cycles=cycles,
                     seconds=seconds, batch_size=batch_size, extra=extra, gen_hash=gen_hash,
                     dev=dev, progress=progress, log=log)


def _check_before_loading(project: Project, opts: SynthOptions, counts: dict[str, int],
                          ds_name: str | None, ds_record: dict | None,
                          cycles: Sequence[Cycle], text: bool) -> None:
    """The checks that need no model: the output folder, the classes the dataset has, and
    the job's size (ConfigError before any model is loaded or vocoder trained; nothing
    written)."""
    if opts.out and opts.force:
        _check_removable(Path(opts.out).resolve())
    named = project.get("synthetic", opts.name) if opts.name and not opts.out else None
    if named is not None:
        project.record_dir("synthetic", opts.name, named, marker="manifest.jsonl")
    if ds_record is not None:
        known = ds_record.get("classes") or sorted({c.label for c in cycles})
        unknown = [c for c in counts if c not in known]
        if unknown:
            raise ConfigError(f"--classes: unknown class {unknown[0]!r} for dataset {ds_name!r} "
                              f"(its classes: {', '.join(known)})")
    # an absurd --n is refused before any model is loaded or vocoder trained
    check_synth_size(upfront_estimate(project, opts, counts, cycles, text), opts.yes)


def _text_backend(opts: SynthOptions, counts: dict[str, int], dev: str,
                  extra: dict[str, Any]) -> tuple[Any, dict[str, list[str]], float]:
    """The AudioLDM (2) backend (its model not loaded yet), the prompts per class and the
    clip length (s); records the prompt file and its hash in `extra`."""
    from rsctool.generators.audioldm import (
        DEFAULT_GUIDANCE,
        DEFAULT_MODELS,
        AudioLDMBackend,
        load_prompts,
    )

    prompts, negative, prompts_sha = load_prompts(opts.prompts)
    missing = [c for c in counts if c not in prompts]
    if missing:
        where = opts.prompts or "the packaged prompt file"
        raise ConfigError(f"{where}: no prompts for class {missing[0]!r} (add "
                          f"`{missing[0]} = [\"...\"]` under [prompts])")
    seconds = opts.seconds or 8.0
    backend = AudioLDMBackend(
        opts.backend, opts.model or DEFAULT_MODELS[opts.backend], device=dev,
        steps=opts.steps, guidance=(opts.guidance if opts.guidance is not None
                                    else DEFAULT_GUIDANCE[opts.backend]),
        seconds=seconds,
        negative_prompt=opts.negative_prompt if opts.negative_prompt is not None
        else negative)
    extra["prompts_file"] = str(Path(opts.prompts).resolve()) if opts.prompts else None
    extra["prompts_sha256"] = prompts_sha
    return backend, prompts, seconds


def _diffwave_backend(project: Project, opts: SynthOptions, counts: dict[str, int], ds_name: str,
                      ds_record: dict, cycles: Sequence[Cycle], dev: str, dist: Any,
                      progress: bool, log: Callable[[str], None],
                      extra: dict[str, Any]) -> tuple[Any, float | None]:
    """The DiffWave backend on the dataset's vocoder (trained first if needed, by the main
    process) and the clip length (None: the source cycle's); records the vocoder and the
    dataset hash in `extra`."""
    from rsctool.distributed import sync_project
    from rsctool.generators.diffwave import DiffWaveBackend

    real_train = [c for c in cycles if c.split == "train" and c.source == "real"]
    sources = {c: [x for x in real_train if x.label == c] for c in counts}
    empty = [c for c, v in sources.items() if not v]
    if empty:
        raise ConfigError(f"diffwave: dataset {ds_name!r} has no real train cycles of "
                          f"class {empty[0]!r} to re-synthesise")
    if dist.is_main:  # trained (or found) once; the other processes then load it
        voc_name, ckpt = ensure_vocoder(project, opts, ds_name, ds_record, real_train,
                                        dev, progress, log)
    sync_project(project, dist)
    if not dist.is_main:
        voc_name, ckpt = ensure_vocoder(project, opts, ds_name, ds_record, real_train,
                                        dev, progress, log)
    backend = DiffWaveBackend(ckpt, sources, device=dev, fast=opts.sampler == "fast",
                              max_seconds=opts.max_seconds, stretch=opts.stretch,
                              mel_noise=opts.mel_noise, gain_db=opts.gain_db,
                              vocoder=voc_name)
    extra["vocoder"] = voc_name
    extra["dataset_sha256"] = ds_record.get("sha256")
    return backend, opts.seconds


def _gen_params(opts: SynthOptions, counts: dict[str, int], described: dict[str, Any],
                text: bool, ds_name: str | None, extra: dict[str, Any],
                qf: Any) -> dict[str, Any]:
    """What determines the samples: its hash (`gen_hash`) finds a set made alike."""
    # text-to-audio: `model_id` (a folder's resolved path and index hash) names the
    # weights, not the string the user typed; diffwave: the vocoder's checkpoint hash
    settings = {k: v for k, v in described.items() if k != "model"} if text else described
    return {
        "version": SYNTH_VERSION, "backend": opts.backend, "classes": list(counts),
        "settings": settings,
        "prompts_sha256": extra.get("prompts_sha256"), "seed": opts.seed,
        "sample_rate": opts.sample_rate, "seconds": opts.seconds, "peak": opts.peak,
        "fade_ms": opts.fade_ms, "dataset": ds_name, "dataset_sha256":
        extra.get("dataset_sha256"), "filter": qf.identity() if qf else None,
        "max_tries": opts.max_tries if qf else None,
    }


def _finished_set(project: Project, opts: SynthOptions, counts: dict[str, int],
                  name: str | None, rec: dict | None, gen_hash: str) -> SynthResult | None:
    """The skipped result when set `name` is done with these options and counts; None when
    there is work to do. ConfigError when the set was made with other options or holds
    more samples than asked (without --force)."""
    from rsctool.data.manifest import file_sha256

    if rec is not None and rec.get("gen_hash") not in (None, gen_hash) and not opts.force:
        raise ConfigError(f"synthetic set {name!r} was made with other options (backend, "
                          "model, prompts, seed, classes or filter); use --force to "
                          "regenerate it, or another --name")
    if rec is None or opts.force:
        return None
    before = {str(k): int(v) for k, v in (rec.get("requested") or {}).items()}
    smaller = [c for c in counts if counts[c] < before.get(c, 0)]
    if smaller:
        c = smaller[0]
        raise ConfigError(f"synthetic set {name!r} already holds {before[c]} {c} samples; "
                          f"asking for {counts[c]} would shrink it: use --force, "
                          "--new or another --name")
    mpath = project.abs(rec["manifest"]) if rec.get("manifest") else None
    if (rec.get("status") == "done" and before == counts and mpath is not None
            and mpath.exists() and file_sha256(mpath) == rec.get("sha256")):
        assert name is not None
        summary_path = project.abs(rec["summary"])
        summary = (json.loads(summary_path.read_text(encoding="utf-8"))
                   if summary_path.exists() else {})
        return SynthResult(name, project.abs(rec["dir"]), dict(rec.get("counts", {})),
                           skipped=True, summary=summary,
                           rejected=dict(summary.get("rejected", {})),
                           seconds_per_sample=(summary.get("seconds_per_sample") or {})
                           .get("all"))
    return None


def _claim_set(project: Project, opts: SynthOptions, dist: Any, *, name: str | None,
               rec: dict | None, gen_hash: str, described: dict[str, Any],
               ds_name: str | None, counts: dict[str, int], dev: str,
               extra: dict[str, Any], qf: Any) -> tuple[str, Path]:
    """Name the set (a new one is reserved), hold its lock, make its folder (emptied with
    --force) and record it as running; returns ``(name, output folder)``."""
    if name is None or rec is None:
        if dist.is_main:
            # the identity goes in with the name, so a set killed before its first
            # record update is found again, and an identical unnamed synth that claimed
            # it meanwhile (while this one loaded its model) is refused, not repeated
            unnamed = opts.name is None and not opts.new
            name = project.reserve_name(
                "synthetic", name or opts.backend,
                {"backend": opts.backend, "status": "running", "gen_hash": gen_hash},
                same=(lambda r: r.get("gen_hash") == gen_hash) if unnamed else None)
        name = dist.broadcast(name)
        rec = None
    assert name is not None
    hold_record(project, "synthetic", name, dist)  # one writer per set
    out = (Path(opts.out).resolve() if opts.out else
           project.record_dir("synthetic", name, rec, marker="manifest.jsonl"))
    manifest_path = out / "manifest.jsonl"
    summary_path = out / "generation_summary.json"
    if dist.is_main:
        if opts.force and out.exists():
            _remove_synth_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        project.update_record(
            "synthetic", name, backend=opts.backend, model=described.get("model"),
            dataset=ds_name, classes=list(counts),
            n=None if opts.balance else (opts.n or DEFAULT_N), requested=counts,
            balance=opts.balance, seed=opts.seed, dir=project.rel(out),
            manifest=project.rel(manifest_path), summary=project.rel(summary_path),
            gen_hash=gen_hash, status="running", device=dev.split(":")[0],
            vocoder=extra.get("vocoder"), filter_run=qf.run if qf else None,
            min_confidence=opts.min_confidence, processes=dist.world)
        manifest_path.touch()
    return name, out


def _generate(project: Project, opts: SynthOptions, *, name: str, out: Path,
              counts: dict[str, int], backend: Any, described: dict[str, Any],
              prompts: Any, qf: Any, cycles: Sequence[Cycle], seconds: Any,
              batch_size: int, extra: dict[str, Any], gen_hash: str, dev: str,
              progress: bool, log: Callable[[str], None]) -> SynthResult:
    """`run`'s generation in one process: per class, the samples still missing (skipping
    those made or rejected before), in batches, until the class has its count (or, with
    a filter, `max_tries` times as many tries); then the set is finished."""
    from rsctool.data.manifest import ManifestWriter, iter_manifest
    from rsctool.generators import Request, sample_seed

    manifest_path = out / "manifest.jsonl"
    writer = ManifestWriter(manifest_path)
    existing = {c.id: c for c in iter_manifest(manifest_path)} \
        if manifest_path.stat().st_size else {}
    rejected = _Rejected(out / "rejected.jsonl")
    source_meta = {c.id: c for c in cycles}
    kept = Counter(c.label for c in existing.values())
    made = 0
    total = sum(counts.values())
    bar = StepProgress(progress, f"synth {name}", total,
                       sum(min(kept[c], n) for c, n in counts.items()))
    last_index = time.monotonic()
    meter, measured = RateMeter(), False
    try:
        for label in counts:
            target = counts[label]
            limit = target * (opts.max_tries if qf else 1)
            i = 0
            while kept[label] < target and i < limit:
                batch: list[Any] = []
                while i < limit and kept[label] + len(batch) < target \
                        and len(batch) < batch_size:
                    cid = cycle_id(name, label, i, opts.backend)
                    if cid not in writer and (label, i) not in rejected:
                        seed = sample_seed(opts.seed, label, i)
                        batch.append(Request(label, i, seed, prompt_for_(prompts, label, i)))
                    i += 1
                if not batch:
                    continue
                n_kept, n_bytes = 0, 0
                for req, gen in zip(batch, backend.generate(batch), strict=True):
                    cyc = _keep_sample(name, opts, out, req, gen, described, source_meta,
                                       seconds, qf, rejected)
                    if cyc is None:
                        continue
                    writer.write(cyc)
                    existing[cyc.id] = cyc
                    kept[label] += 1
                    made += 1
                    n_kept += 1
                    n_bytes += _sample_bytes(cyc)
                    bar.update(label=label)
                meter.tick(n_kept, n_bytes)
                if not measured and meter.count and (meter.count >= 3 or meter.elapsed >= 20):
                    measured = True
                    left = total - sum(min(kept[c], n) for c, n in counts.items())
                    est = measured_estimate(meter, left, out, _asked(opts))
                    check_synth_size(est, opts.yes, done=made)
                    log(f"synth {name}: {meter.elapsed / meter.count:.3g} s/sample, "
                        f"{est.text()}")
                if time.monotonic() - last_index > 10:
                    _write_indexes(out, list(existing.values()))
                    last_index = time.monotonic()
            if kept[label] < target:
                _warn_filter_shortfall(name, label, kept[label], target, opts, limit)
    except (KeyboardInterrupt, SynthTooLarge):
        # kept as made: the same command (with --yes) goes on from them
        with contextlib.suppress(Exception):
            writer.close()
            rejected.close()
            _write_indexes(out, list(existing.values()))
            project.update_record("synthetic", name, status="interrupted",
                                  counts=dict(Counter(c.label for c in existing.values())))
        raise
    finally:
        bar.close()
        writer.close()
        rejected.close()

    return _finish_set(project, opts, name=name, out=out, counts=counts,
                       cycles=list(existing.values()), rejected=rejected.counts(),
                       described=described, prompts=prompts, extra=extra, gen_hash=gen_hash,
                       dev=dev, qf=qf, made=made)


def _asked(opts: SynthOptions) -> str:
    """The option that set the sample counts, as typed."""
    return "--balance" if opts.balance else f"--n {opts.n or DEFAULT_N}"


def _sample_bytes(cycle: Cycle) -> int:
    """Bytes one written sample takes: its wav and annotation, plus its manifest line."""
    audio = Path(cycle.audio)
    size = SAMPLE_OVERHEAD_BYTES
    for p in (audio, audio.with_suffix(".txt")):
        with contextlib.suppress(OSError):
            size += p.stat().st_size
    return size


def upfront_estimate(project: Project, opts: SynthOptions, counts: dict[str, int],
                     cycles: Sequence[Cycle], text: bool) -> SynthEstimate:
    """The disk a job needs, from the clip length (``--seconds``; 8 s for text to audio;
    the mean real train cycle, at most ``--max-seconds``, for diffwave), the rate and the
    sample count (all requested ones: a set that already holds some needs less)."""
    total = sum(counts.values())
    secs = opts.seconds
    if secs is None and text:
        secs = 8.0
    if secs is None:
        durs = [min(c.end - c.start, opts.max_seconds) for c in cycles
                if c.split == "train" and c.source == "real" and c.label in counts]
        secs = sum(durs) / len(durs) if durs else opts.max_seconds
    where = Path(opts.out) if opts.out else project.state_dir() / "synthetic"
    return SynthEstimate(samples=total, bytes=total * wav_bytes(secs, opts.sample_rate),
                         free=free_bytes(where), where=_asked(opts))


def measured_estimate(meter: RateMeter, left: int, out: Path, where: str) -> SynthEstimate:
    """The time and disk the `left` samples still to make take, at the measured time
    and bytes per kept sample."""
    return SynthEstimate(samples=left, bytes=left * meter.units / meter.count,
                         free=free_bytes(out), where=where, seconds=meter.eta(left))


def _finish_set(project: Project, opts: SynthOptions, *, name: str, out: Path,
                counts: dict[str, int], cycles: list[Cycle], rejected: Counter,
                described: dict[str, Any], prompts: Any, extra: dict[str, Any],
                gen_hash: str, dev: str, qf: Any, made: int) -> SynthResult:
    """Everything generated: indexes, summary, then the record says done."""
    from rsctool.data.manifest import file_sha256

    manifest_path = out / "manifest.jsonl"
    all_cycles = sorted(cycles, key=lambda c: c.id)
    _write_indexes(out, all_cycles)
    sha = file_sha256(manifest_path)
    final_counts = {c: sum(1 for x in all_cycles if x.label == c) for c in counts}
    summary = _summary(name, opts, described, counts, all_cycles, rejected, prompts,
                       {**extra, "manifest": str(manifest_path), "manifest_sha256": sha,
                        "gen_hash": gen_hash, "device": dev,
                        "filter": qf.identity() if qf else None})
    atomic_write_json(out / "generation_summary.json", summary)
    project.update_record("synthetic", name, status="done", counts=final_counts, sha256=sha,
                          samples=len(all_cycles),
                          seconds_per_sample=summary["seconds_per_sample"]["all"])
    return SynthResult(name, out, final_counts, made=made, rejected=dict(rejected),
                       seconds_per_sample=summary["seconds_per_sample"]["all"],
                       summary=summary)


def _read_part(path: Path) -> list[Cycle]:
    """The complete records of a manifest part another process may still append to (a
    torn or partial last line is not read)."""
    out: list[Cycle] = []
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    lines = raw.split("\n")
    for line in lines[:-1]:  # the text after the last newline is incomplete
        if not line.strip():
            continue
        try:
            out.append(Cycle.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            break
    return out


def _generate_sharded(project: Project, opts: SynthOptions, dist: Any, *, name: str, out: Path,
                      counts: dict[str, int], backend: Any, described: dict[str, Any],
                      prompts: Any, qf: Any, cycles: Sequence[Cycle], seconds: Any,
                      batch_size: int, extra: dict[str, Any], gen_hash: str, dev: str,
                      progress: bool) -> SynthResult:
    """`run`'s generation with several processes.

    Per class, in rounds: the next ``processes x batch_size`` sample indices still to
    make (never more than the class still needs), a contiguous batch of them per process.
    Each process generates and post-processes its batch (and scores it with the quality
    filter) and writes its kept samples, its own ``manifest.part-R.jsonl`` and
    ``rejected.part-R.jsonl``; the processes then exchange how many they kept. Sample
    ``i`` is the same function of ``(--seed, class, i)`` as in one process, and the
    indices are taken in the same order, so the set equals the one-process set. After a
    barrier the main process merges the parts into ``manifest.jsonl`` and
    ``rejected.jsonl`` (the parts are then removed; an interrupted run leaves them, and
    the next run, with any number of processes, reads them back) and finishes the set.
    """
    from rsctool.data.manifest import ManifestWriter, iter_manifest
    from rsctool.generators import Request, sample_seed

    manifest_path = out / "manifest.jsonl"
    writer = ManifestWriter(out / f"manifest.part-{dist.rank}.jsonl")  # drops a torn tail
    rejected = _Rejected(out / f"rejected.part-{dist.rank}.jsonl")
    dist.barrier()  # every part is clean before any process reads the others'
    existing = {c.id: c for c in iter_manifest(manifest_path)} \
        if manifest_path.exists() and manifest_path.stat().st_size else {}
    for part in sorted(out.glob("manifest.part-*.jsonl")):
        existing.update({c.id: c for c in _read_part(part)})
    skip: set[tuple[str, int]] = set()
    for path in [out / "rejected.jsonl", *sorted(out.glob("rejected.part-*.jsonl"))]:
        skip |= set(_Rejected(path).items)
    dist.barrier()  # all read the same parts before any process appends to its own
    source_meta = {c.id: c for c in cycles}
    kept = Counter(c.label for c in existing.values())
    made = 0
    bar = StepProgress(progress, f"synth {name}", sum(counts.values()),
                       sum(min(kept[c], n) for c, n in counts.items()))
    try:
        for label in counts:
            target = counts[label]
            limit = target * (opts.max_tries if qf else 1)
            pending = (i for i in range(limit)
                       if cycle_id(name, label, i, opts.backend) not in existing
                       and (label, i) not in skip)
            while kept[label] < target:
                take = [i for _, i in zip(range(min(dist.world * batch_size,
                                                    target - kept[label])), pending,
                                          strict=False)]
                if not take:
                    break
                mine = take[dist.rank * batch_size:(dist.rank + 1) * batch_size]
                batch = [Request(label, i, sample_seed(opts.seed, label, i),
                                 prompt_for_(prompts, label, i)) for i in mine]
                n_kept = 0
                for req, gen in zip(batch, backend.generate(batch) if batch else [],
                                    strict=True):
                    cyc = _keep_sample(name, opts, out, req, gen, described, source_meta,
                                       seconds, qf, rejected)
                    if cyc is None:
                        continue
                    writer.write(cyc)
                    existing[cyc.id] = cyc
                    n_kept += 1
                    made += 1
                total = int(round(dist.all_sum([n_kept])[0]))
                kept[label] += total
                bar.update(advance=total, label=label)
            if kept[label] < target and dist.is_main:
                _warn_filter_shortfall(name, label, kept[label], target, opts, limit)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            writer.close()
            rejected.close()
            if dist.is_main:
                project.update_record("synthetic", name, status="interrupted")
        raise
    finally:
        bar.close()
        writer.close()
        rejected.close()
    made = int(round(dist.all_sum([made])[0]))  # also: every process has closed its parts
    result = None
    if dist.is_main:
        all_cycles, rej_all = _merge_parts(out, counts)
        result = _finish_set(project, opts, name=name, out=out, counts=counts,
                             cycles=all_cycles, rejected=Counter(lbl for lbl, _ in rej_all),
                             described=described, prompts=prompts, extra=extra,
                             gen_hash=gen_hash, dev=dev.split(":")[0], qf=qf, made=made)
    from rsctool.distributed import sync_project

    sync_project(project, dist)
    return dist.broadcast(result)


def _merge_parts(out: Path, counts: dict[str, int]
                 ) -> tuple[list[Cycle], dict[tuple[str, int], dict[str, Any]]]:
    """Merge the processes' manifest and rejected parts into ``manifest.jsonl`` (in
    class, then sample order) and ``rejected.jsonl``, and remove the parts; returns the
    set's cycles and ``{(label, index): rejection}``."""
    from rsctool.data.manifest import iter_manifest, write_manifest

    manifest_path = out / "manifest.jsonl"
    merged = {c.id: c for c in iter_manifest(manifest_path)} \
        if manifest_path.stat().st_size else {}
    parts = sorted(out.glob("manifest.part-*.jsonl"))
    for part in parts:
        merged.update({c.id: c for c in _read_part(part)})
    order = {label: k for k, label in enumerate(counts)}
    all_cycles = sorted(merged.values(), key=lambda c: (
        order.get(c.label, len(order)), int(c.generator.get("index", 0)), c.id))
    write_manifest(manifest_path, all_cycles)
    rej_all: dict[tuple[str, int], dict[str, Any]] = {}
    rej_parts = sorted(out.glob("rejected.part-*.jsonl"))
    for path in [out / "rejected.jsonl", *rej_parts]:
        rej_all.update(_Rejected(path).items)
    if rej_all:
        atomic_write_text(out / "rejected.jsonl", "".join(
            json.dumps(d) + "\n" for _, d in sorted(rej_all.items())))
    for path in [*parts, *rej_parts]:
        path.unlink(missing_ok=True)
    return all_cycles, rej_all


def prompt_for_(prompts: Any, label: str, index: int) -> str | None:
    """The prompt of sample `index` of `label` (text-to-audio backends), else None."""
    if not prompts:
        return None
    from rsctool.generators.audioldm import prompt_for

    return prompt_for(prompts, label, index)


def _make_cycle(name: str, opts: SynthOptions, out: Path, req: Any, gen: Any, wav: Any,
                described: dict[str, Any], source: Cycle | None) -> Cycle:
    """The manifest record of one sample (metadata inherited from a diffwave source)."""
    stem = stem_for(req.label, req.index, opts.backend)
    crackle, wheeze = _flags(req.label)
    generator = {"backend": opts.backend, "model": described.get("model"), "set": name,
                 "index": req.index, "seed": req.seed, "steps": described.get("steps"),
                 "guidance": described.get("guidance"), **gen.info,
                 "seconds": round(float(gen.seconds), 6)}
    meta: dict[str, Any] = {}
    if source is not None:
        # the re-synthesised mel carries its recording's device, site and patient
        meta = {k: getattr(source, k) for k in ("patient", "device", "site", "mode", "age",
                                                 "sex", "bmi", "diagnosis")}
    return Cycle(id=f"{name}:{stem}", audio=str(out / req.label / f"{stem}.wav"), start=0.0,
                 end=len(wav) / opts.sample_rate, label=req.label, split="train",
                 crackle=crackle, wheeze=wheeze, recording=stem,
                 sample_rate=opts.sample_rate, source="synthetic", generator=generator,
                 **meta)


def _warn_filter_shortfall(name: str, label: str, kept: int, target: int,
                           opts: SynthOptions, tries: int) -> None:
    warn(f"synthetic set {name!r}: only {kept} of {target} {label} samples passed "
         f"--min-confidence {opts.min_confidence} in {tries} tries (lower it or raise "
         "--max-tries)")


def _keep_sample(name: str, opts: SynthOptions, out: Path, req: Any, gen: Any,
                 described: dict[str, Any], source_meta: dict[str, Cycle],
                 seconds: float | None, qf: Any, rejected: Any) -> Cycle | None:
    """Post-process one generated sample (resample, crop/pad to its length, peak, fades),
    score it with the quality filter, and write it; None (recorded in `rejected`) when
    the filter turns it down."""
    from rsctool.generators import postprocess

    length = opts.seconds or gen.target_seconds or seconds or 8.0
    wav = postprocess(gen.wav, gen.sample_rate, opts.sample_rate, length, peak=opts.peak,
                      fade_s=opts.fade_ms / 1000.0)
    cyc = _make_cycle(name, opts, out, req, gen, wav, described,
                      source_meta.get(gen.info.get("source_cycle")))
    if qf is not None:
        conf = qf.confidence(wav, opts.sample_rate, req.label, cyc)
        cyc.generator["confidence"] = round(conf, 6)
        if conf < qf.min_confidence:
            rejected.add({"label": req.label, "index": req.index, "seed": req.seed,
                          "confidence": conf, **gen.info})
            return None
    _write_sample(out, cyc, wav, opts.sample_rate)
    return cyc


def _write_sample(out: Path, cycle: Cycle, wav: Any, sample_rate: int) -> None:
    """The wav and its one-line ICBHI annotation (both written atomically)."""
    from rsctool.audio import write_audio

    assert cycle.label == icbhi_label(cycle.crackle or 0, cycle.wheeze or 0)
    audio = Path(cycle.audio)
    # Temp files of this very sample left by a killed run (each sample has one writer,
    # even when ranks share a set, so these are never another process's live files).
    for stale in audio.parent.glob(f".{audio.stem}.*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    write_audio(cycle.audio, wav, sample_rate, "PCM_16")
    atomic_write_text(Path(cycle.audio).with_suffix(".txt"),
                      f"{cycle.start:.3f}\t{cycle.end:.3f}\t{cycle.crackle}\t{cycle.wheeze}\n")


# --------------------------------------------------------------------------- command

#: Every option's default, written once: the Typer options below refer to it.
_D = SynthOptions()


def _split_names(values: Sequence[str] | None) -> list[str]:
    """Repeated options, comma-separated lists and trailing words, flattened."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def command(
    ctx: typer.Context,
    more_classes: Annotated[list[str] | None, typer.Argument(
        metavar="CLASS", show_default=False,
        help="More classes, so `--classes crackle wheeze` works.")] = None,
    *,
    backend: Annotated[str, typer.Option(
        help="audioldm, audioldm2 (text to audio) or diffwave (vocoder trained on the "
             "dataset).", rich_help_panel="Generation")] = _D.backend,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", "-c", show_default=False,
        help="Classes to make: normal, crackle, wheeze, both (default crackle wheeze both; "
             "repeat, comma-separate or list them).", rich_help_panel="Generation")] = _D.classes,
    n: Annotated[int | None, typer.Option(
        "--n", "-n", help="Samples per class (default 100).", show_default=False,
        rich_help_panel="Generation")] = _D.n,
    balance: Annotated[bool, typer.Option(
        help="Per-class counts from the analyze report's synthesis plan.",
        rich_help_panel="Generation")] = _D.balance,
    name: Annotated[str | None, typer.Option(
        help="Set name (default: the set made with the same options, else BACKEND-N).",
        rich_help_panel="Output")
    ] = _D.name,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default .rsctool/synthetic/NAME).",
        rich_help_panel="Output")] = _D.out,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset in the project (default: the last analysed).",
        rich_help_panel="Generation")] = _D.dataset,
    model: Annotated[str | None, typer.Option(
        help="Text-to-audio model: hub id or local folder (default "
             "cvssp/audioldm-s-full-v2; cvssp/audioldm2 for audioldm2).",
        rich_help_panel="Text to audio")] = _D.model,
    prompts: Annotated[Path | None, typer.Option(
        help="Prompt TOML file (default: the packaged one; see docs/synth.md).",
        rich_help_panel="Text to audio")] = _D.prompts,
    steps: Annotated[int, typer.Option(help="Denoising steps (text to audio).",
        rich_help_panel="Text to audio")] = _D.steps,
    guidance: Annotated[float | None, typer.Option(
        help="Guidance scale (default 7.5 AudioLDM, 3.5 AudioLDM 2).",
        rich_help_panel="Text to audio")] = _D.guidance,
    negative_prompt: Annotated[str | None, typer.Option(
        help="Negative prompt (default: the prompt file's).",
        rich_help_panel="Text to audio")] = _D.negative_prompt,
    seconds: Annotated[float | None, typer.Option(
        help="Cycle length in s (default 8 for text to audio; diffwave: the source "
             "cycle's).", rich_help_panel="Generation")] = _D.seconds,
    max_seconds: Annotated[float, typer.Option(
        help="diffwave: longest excerpt of a source cycle re-synthesised (s).",
        rich_help_panel="DiffWave")] = _D.max_seconds,
    sample_rate: Annotated[int, typer.Option(help="Rate of the written files (Hz).",
        rich_help_panel="Generation")] = _D.sample_rate,
    batch_size: Annotated[int | None, typer.Option(
        help="Samples per generator call (default 4 on CUDA, 1 on CPU).",
        rich_help_panel="Generation")] = _D.batch_size,
    vocoder: Annotated[str | None, typer.Option(
        help="diffwave: vocoder name in the project (default diffwave-DATASET).",
        rich_help_panel="DiffWave")] = _D.vocoder,
    vocoder_size: Annotated[str, typer.Option(
        help="diffwave: base (30 layers, 64 channels) or tiny.",
        rich_help_panel="DiffWave")] = _D.vocoder_size,
    vocoder_layers: Annotated[int | None, typer.Option(
        help="diffwave: residual layers (overrides the size).",
        rich_help_panel="DiffWave")] = _D.vocoder_layers,
    vocoder_channels: Annotated[int | None, typer.Option(
        help="diffwave: residual channels (overrides the size).",
        rich_help_panel="DiffWave")] = _D.vocoder_channels,
    vocoder_steps: Annotated[int, typer.Option(
        help="diffwave: vocoder training steps (more resumes training).",
        rich_help_panel="DiffWave")] = _D.vocoder_steps,
    vocoder_batch_size: Annotated[int, typer.Option(
        help="diffwave: segments per training step.",
        rich_help_panel="DiffWave")] = _D.vocoder_batch_size,
    vocoder_segment_frames: Annotated[int, typer.Option(
        help="diffwave: mel frames per training segment.",
        rich_help_panel="DiffWave")] = _D.vocoder_segment_frames,
    vocoder_lr: Annotated[float, typer.Option(
        help="diffwave: vocoder learning rate (Adam).",
        rich_help_panel="DiffWave")] = _D.vocoder_lr,
    vocoder_checkpoint_every: Annotated[int, typer.Option(
        help="diffwave: steps between vocoder checkpoints.",
        rich_help_panel="DiffWave")] = _D.vocoder_checkpoint_every,
    sampler: Annotated[str, typer.Option(
        help="diffwave: fast (6 steps) or full (50 steps).",
        rich_help_panel="DiffWave")] = _D.sampler,
    stretch: Annotated[float, typer.Option(
        help="diffwave: max relative time stretch of the source mel (0: none, seed 002).",
        rich_help_panel="DiffWave")] = _D.stretch,
    mel_noise: Annotated[float, typer.Option(
        help="diffwave: std of noise added to the normalised mel (0: none, seed 002).",
        rich_help_panel="DiffWave")] = _D.mel_noise,
    gain_db: Annotated[float, typer.Option(
        help="diffwave: max level change of the source mel (dB; 0: none, seed 002).",
        rich_help_panel="DiffWave")] = _D.gain_db,
    min_confidence: Annotated[float | None, typer.Option(
        help="Keep only samples the filter run assigns to their class with at least this "
             "probability.", rich_help_panel="Quality filter")] = _D.min_confidence,
    filter_run: Annotated[str | None, typer.Option(
        help="Run that scores samples for --min-confidence (default: the last finished).",
        rich_help_panel="Quality filter")
    ] = _D.filter_run,
    max_tries: Annotated[int, typer.Option(
        help="With a filter: give up on a class after N x this many samples.",
        rich_help_panel="Quality filter")] = _D.max_tries,
    force: Annotated[bool, typer.Option(
        help="Regenerate a set made with other options (deletes its files).",
        rich_help_panel="Output")] = _D.force,
    new: Annotated[bool, typer.Option(
        "--new", help="Make a new set even if one was made with the same options (without "
                      "--name, the same options find their set again).",
        rich_help_panel="Output")] = _D.new,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y",
        help="Go ahead with a job estimated above 24 h, 1,000,000 samples or the free disk "
             "space (refused without it).", rich_help_panel="Generation")] = _D.yes,
    processes: Annotated[int | None, typer.Option(
        help="Share the samples out to N processes on this machine (one per GPU): the "
             "same as `torchrun --nproc-per-node N -m rsctool synth ...`.", min=1,
        rich_help_panel="Generation")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.",
        rich_help_panel="Output")]
    = False,
) -> None:
    """Generate synthetic minority-class cycles (AudioLDM, AudioLDM 2 or DiffWave)."""
    state = get_state(ctx)
    listed = _split_names(classes) + _split_names(more_classes)
    if more_classes and not classes:
        raise ConfigError(f"unexpected argument {more_classes[0]!r} (classes go after "
                          "--classes)")
    opts = SynthOptions(
        backend=backend, classes=listed or None, n=n, balance=balance, name=name,
        out=str(out) if out else None, dataset=dataset, seed=state.seed,
        sample_rate=sample_rate, seconds=seconds, max_seconds=max_seconds,
        batch_size=batch_size, model=model,
        prompts=str(prompts) if prompts else None, steps=steps, guidance=guidance,
        negative_prompt=negative_prompt, vocoder=vocoder, vocoder_size=vocoder_size,
        vocoder_layers=vocoder_layers, vocoder_channels=vocoder_channels,
        vocoder_steps=vocoder_steps, vocoder_batch_size=vocoder_batch_size,
        vocoder_segment_frames=vocoder_segment_frames, vocoder_lr=vocoder_lr,
        vocoder_checkpoint_every=vocoder_checkpoint_every, sampler=sampler, stretch=stretch,
        mel_noise=mel_noise, gain_db=gain_db, min_confidence=min_confidence,
        filter_run=filter_run, max_tries=max_tries, force=force, new=new,
        yes=yes)
    opts = opts.validate()  # bad options fail before the project is read
    if processes is not None:
        from rsctool.distributed import launch_here

        launch_here(processes)  # returns only when this process should do the work
    project = state.load_project(must_exist=opts.backend == "diffwave" or opts.balance
                                 or opts.min_confidence is not None)
    result = run(project, opts, device=state.device, progress=not state.quiet and not json_out,
                 log=lambda msg: info(state, msg))
    from rsctool.distributed import env_rank

    if env_rank() != 0:
        return  # the main process reports
    doc = {"name": result.name, "dir": str(result.dir), "counts": result.counts,
           "made": result.made, "rejected": result.rejected, "skipped": result.skipped,
           "seconds_per_sample": result.seconds_per_sample}
    if json_out:
        print_json(doc)
    if result.skipped:
        info(state, f"already done: synthetic set {result.name!r} with these options; "
                    "nothing to do (--new makes another set, --force regenerates it)")
    else:
        sps = ("n/a" if result.seconds_per_sample is None
               else f"{result.seconds_per_sample:.3g} s/sample")
        made = ", ".join(f"{k} {v}" for k, v in result.counts.items())
        info(state, f"synthetic set {result.name!r}: {made} ({result.made} new, {sps}) in "
                    f"{result.dir}")
