"""Helpers that build synthetic audio and datasets for tests, examples and benchmarks.

Everything here writes small files quickly and deterministically (a seed fixes every
sample), never touches the network and needs no real recordings.

* `write_noise_wav`: one noise file of a given length.
* `write_icbhi_dataset`: a tiny hand-made ICBHI-layout dataset (annotations, audio,
  split and metadata files) for reader tests.
* `synthesize_icbhi_audio`: noise audio for the real ICBHI 2017 annotation files
  (``../shared/icbhi-meta``), giving a full-size dataset without the real recordings.
* `write_folder_dataset`: a ``<class>/**/*.wav`` folder dataset.
"""

from __future__ import annotations

import math
import os
import shutil
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "icbhi_meta_dir",
    "synthesize_icbhi_audio",
    "write_folder_dataset",
    "write_icbhi_dataset",
    "write_noise_wav",
    "write_tiny_audioldm",
]

#: Environment variable that points at the ICBHI metadata folder (overrides the default).
ICBHI_META_ENV = "RSCTOOL_ICBHI_META"


def icbhi_meta_dir() -> Path | None:
    """The folder with the real ICBHI 2017 annotation and metadata files, if present.

    ``$RSCTOOL_ICBHI_META`` if set, else ``../shared/icbhi-meta`` next to the repository
    root. None when the folder (or its ``ICBHI_final_database``) is absent, so tests
    can skip with a reason.
    """
    env = os.environ.get(ICBHI_META_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "icbhi-meta"
    return path if (path / "ICBHI_final_database").is_dir() else None


def _noise(n: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """`(n,)` int16 Gaussian noise with RMS `amplitude` of full scale."""
    x = rng.standard_normal(n, dtype=np.float32) * (amplitude * 32767.0)
    return np.clip(x, -32767, 32767).astype(np.int16)


def write_noise_wav(path: str | os.PathLike, seconds: float, sample_rate: int = 4000, *,
                    seed: int = 0, amplitude: float = 0.1, channels: int = 1,
                    subtype: str = "PCM_16") -> Path:
    """Write `seconds` of Gaussian noise (RMS `amplitude` of full scale) to `path`.

    The format follows the suffix: wav and flac get `subtype` (flac: PCM only),
    ogg is Vorbis. `channels` > 1 writes identical channels. Returns `path`.
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng(seed)
    data = np.clip(rng.standard_normal(n, dtype=np.float32) * amplitude, -1.0, 1.0)
    if channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    suffix = path.suffix.lower()
    if suffix == ".ogg":
        subtype = "VORBIS"
    elif suffix == ".flac" and not subtype.startswith("PCM"):
        subtype = "PCM_16"
    sf.write(path, data, sample_rate, subtype=subtype)
    return path


Row = tuple[float, float, int, int]


def write_icbhi_dataset(root: str | os.PathLike,
                        recordings: Mapping[str, str | Sequence[Row]], *,
                        splits: Mapping[str, str] | str | None = None,
                        audio_seconds: Mapping[str, float] | float | None = None,
                        sample_rate: int = 4000,
                        demographics: str | None = None,
                        diagnosis: str | None = None,
                        metadata_in_parent: bool = False,
                        seed: int = 0) -> Path:
    """Write a small ICBHI-layout dataset and return its folder.

    Args:
        root: dataset folder (created).
        recordings: ``{stem: rows}``; rows are ``(start, end, crackle, wheeze)`` tuples
            (written tab-separated) or a raw annotation text written as is (to test
            malformed input). A stem mapped to None gets audio but no annotation.
        splits: ``{stem: "train"|"test"}`` written as ``ICBHI_challenge_train_test.txt``,
            or raw text for that file; None writes no split file.
        audio_seconds: audio length per stem (or one length for all); default: the last
            cycle end + 0.5 s (2 s when the rows cannot be read). A stem mapped to 0 or
            a negative length gets no audio file.
        demographics, diagnosis: raw text of the challenge metadata files (None: absent).
        metadata_in_parent: write the metadata files into `root`'s parent, like the
            official download, instead of into `root`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = root.parent if metadata_in_parent else root
    for i, (stem, rows) in enumerate(recordings.items()):
        if rows is not None:
            text = rows if isinstance(rows, str) else "".join(
                f"{s}\t{e}\t{c}\t{w}\n" for s, e, c, w in rows)
            (root / f"{stem}.txt").write_text(text, encoding="utf-8", newline="")
        if isinstance(audio_seconds, Mapping):
            seconds = audio_seconds.get(stem)
        else:
            seconds = audio_seconds
        if seconds is None:
            seconds = _last_end(rows) + 0.5 if rows is not None else 2.0
        if seconds > 0:
            write_noise_wav(root / f"{stem}.wav", seconds, sample_rate, seed=seed + i)
    if splits is not None:
        text = splits if isinstance(splits, str) else "".join(
            f"{k}\t{v}\r\n" for k, v in splits.items())
        (meta / "ICBHI_challenge_train_test.txt").write_text(text, encoding="utf-8",
                                                             newline="")
    if demographics is not None:
        (meta / "ICBHI_Challenge_demographic_information.txt").write_text(
            demographics, encoding="utf-8", newline="")
    if diagnosis is not None:
        (meta / "ICBHI_Challenge_diagnosis.txt").write_text(diagnosis, encoding="utf-8",
                                                            newline="")
    return root


def _last_end(rows: str | Sequence[Row] | None) -> float:
    """Largest readable end time of annotation rows or text (1.5 s when none reads)."""
    if rows is None:
        return 1.5
    if isinstance(rows, str):
        ends = []
        for line in rows.splitlines():
            tokens = line.split()
            if len(tokens) >= 2:
                try:
                    end = float(tokens[1])
                except ValueError:
                    continue
                if math.isfinite(end):
                    ends.append(end)
        return max(ends, default=1.5)
    return max((float(r[1]) for r in rows), default=1.5)


#: Native sample rates of the ICBHI 2017 stethoscopes (Hz).
ICBHI_DEVICE_RATES = {"AKGC417L": 44100, "Meditron": 4000, "LittC2SE": 4000, "Litt3200": 4000}


def synthesize_icbhi_audio(meta_dir: str | os.PathLike, out_dir: str | os.PathLike,
                           sample_rate: int | None = 4000, seed: int = 0) -> Path:
    """Build a full ICBHI-layout dataset from the real annotations and noise audio.

    Copies every annotation ``.txt`` of ``meta_dir/ICBHI_final_database`` (or of
    `meta_dir` itself when it holds them) into ``out_dir/ICBHI_final_database``,
    copies the challenge metadata files found next to it into `out_dir`, and writes
    for every recording an int16 mono wav of Gaussian noise at `sample_rate` Hz that
    lasts until 0.5 s after its last cycle. 920 recordings take a few seconds.
    ``sample_rate=None`` uses each device's real rate (`ICBHI_DEVICE_RATES`), as
    large as the real database (~1.5 GB less compression), for benchmarks.

    Returns:
        ``out_dir/ICBHI_final_database`` (the folder to give to `read_icbhi`).
    """
    from rsctool.data.icbhi import RECORDING_RE, find_metadata_files

    meta_dir = Path(meta_dir)
    src = meta_dir / "ICBHI_final_database"
    if not src.is_dir():
        src = meta_dir
    out_dir = Path(out_dir)
    dst = out_dir / "ICBHI_final_database"
    dst.mkdir(parents=True, exist_ok=True)
    for path in find_metadata_files(src).values():
        if path is not None:
            shutil.copyfile(path, out_dir / path.name)

    stems = sorted(p.stem for p in src.glob("*.txt") if RECORDING_RE.match(p.stem))
    lengths: dict[str, int] = {}
    rates: dict[str, int] = {}
    for stem in stems:
        text = (src / f"{stem}.txt").read_text(encoding="utf-8-sig")
        (dst / f"{stem}.txt").write_text(text, encoding="utf-8", newline="")
        rate = sample_rate or ICBHI_DEVICE_RATES.get(stem.rsplit("_", 1)[-1], 4000)
        rates[stem] = rate
        lengths[stem] = int(math.ceil((_last_end(text) + 0.5) * rate))
    # One noise buffer, sliced at a different offset per file: generating 920 separate
    # streams costs more than writing the files, and tests only need plausible noise.
    rng = np.random.default_rng(seed)
    longest = max(lengths.values(), default=1)
    buffer = _noise(2 * longest, rng, 0.1).astype("<i2")
    offsets = rng.integers(0, longest, size=len(stems))
    for stem, offset in zip(stems, offsets, strict=True):
        # stdlib wave, not soundfile: libsndfile fsyncs every file on close, which
        # makes 920 files take seconds instead of a fraction of one
        with wave.open(str(dst / f"{stem}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rates[stem])
            w.writeframes(buffer[offset:offset + lengths[stem]].tobytes())
    return dst


def write_folder_dataset(root: str | os.PathLike, files: Mapping[str, float] | Sequence[str],
                         *, seconds: float = 0.5, sample_rate: int = 8000,
                         seed: int = 0) -> Path:
    """Write a ``<class>/**/*.wav`` folder dataset of noise files and return `root`.

    Args:
        files: relative paths (``"crackle/site1/a.wav"``), optionally mapped to lengths
            in seconds; the suffix picks the format (wav/flac/ogg).
        seconds: length of files given without one.
    """
    root = Path(root)
    items = files.items() if isinstance(files, Mapping) else ((f, seconds) for f in files)
    for i, (rel, length) in enumerate(items):
        write_noise_wav(root / rel, length, sample_rate, seed=seed + i)
    return root


#: Text the tiny tokenizers of `write_tiny_audioldm` are trained on (the default prompts'
#: words, so prompts tokenize into real merges rather than single bytes).
_TINY_CORPUS = (
    "lung auscultation breath sounds stethoscope recording crackles fine coarse popping "
    "clicking inhalation exhalation wheeze wheezing whistling musical tone rhonchi normal "
    "vesicular healthy breathing chest patient music speech noise static low quality"
)


def write_tiny_audioldm(path: str | os.PathLike, version: str = "audioldm", *,
                        seed: int = 0) -> Path:
    """Save a randomly initialised, tiny AudioLDM (or AudioLDM 2) pipeline to `path`.

    Every component is built offline from a config (tiny UNet, VAE, CLAP text encoder,
    HiFi-GAN vocoder; for AudioLDM 2 also T5, GPT-2, the projection model and a CLAP
    feature extractor), so `--model path` exercises the real loading and sampling code
    without weights from a hub. The tokenizers are byte-level BPE (CLAP/RoBERTa) and
    unigram (T5) models trained on a few words with `tokenizers`, saved as
    ``tokenizer.json`` and loaded with ``from_pretrained`` (transformers 5 ignores a
    ``vocab_file=`` given to the RoBERTa constructor). The vocoder upsamples 64x, so a
    second of audio is 250 mel frames: 2 denoising steps take well under a second.
    The output is noise-like; only shapes, determinism and plumbing are meaningful.

    Returns:
        `path` (a folder with ``model_index.json``).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import ClapTextConfig, SpeechT5HifiGan, SpeechT5HifiGanConfig

    if version not in ("audioldm", "audioldm2"):
        raise ValueError(f"version must be audioldm or audioldm2, got {version!r}")
    path = Path(path)
    work = path.parent / f".{path.name}.tokenizers"
    corpus = [_TINY_CORPUS] * 4 + _TINY_CORPUS.split()
    tokenizer = _tiny_clap_tokenizer(work, corpus)

    torch.manual_seed(seed)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=4)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=8, upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16], resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]], normalize_before=False))
    text_config = ClapTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1,
                                 vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                 num_attention_heads=2, num_hidden_layers=1, projection_dim=8,
                                 max_position_embeddings=80)
    shared = {"vae": vae, "tokenizer": tokenizer, "scheduler": scheduler, "vocoder": vocoder}
    if version == "audioldm":
        pipe = _tiny_audioldm_pipe(shared, text_config)
    else:
        pipe = _tiny_audioldm2_pipe(shared, text_config, work, corpus)
    pipe.save_pretrained(path)
    shutil.rmtree(work, ignore_errors=True)
    return path


def _tiny_clap_tokenizer(work: Path, corpus: list[str]) -> Any:
    """A byte-level BPE (RoBERTa) tokenizer trained on `corpus`, saved under `work`."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok_dir = work / "clap"
    tok_dir.mkdir(parents=True, exist_ok=True)
    bpe.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "model_max_length": 77, "bos_token": "<s>",
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}))
    return RobertaTokenizer.from_pretrained(tok_dir)


def _tiny_t5_tokenizer(work: Path, corpus: list[str]) -> Any:
    """A unigram (T5) tokenizer trained on `corpus`, saved under `work`."""
    import json

    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import T5Tokenizer

    uni = SentencePieceUnigramTokenizer()
    uni.train_from_iterator(corpus, vocab_size=100, show_progress=False,
                            special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    uni.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>",
        special_tokens=[("</s>", uni.token_to_id("</s>"))])
    t5_dir = work / "t5"
    t5_dir.mkdir(parents=True, exist_ok=True)
    uni.save(str(t5_dir / "tokenizer.json"))
    (t5_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": 77, "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 0}))
    return T5Tokenizer.from_pretrained(t5_dir)


def _tiny_audioldm_pipe(shared: dict[str, Any], text_config: Any) -> Any:
    """The AudioLDM pipeline of `write_tiny_audioldm` (UNet, then CLAP text encoder)."""
    from diffusers import AudioLDMPipeline, UNet2DConditionModel
    from transformers import ClapTextModelWithProjection

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(8, 16),
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=8,
        class_embeddings_concat=True, norm_num_groups=4, attention_head_dim=2)
    return AudioLDMPipeline(text_encoder=ClapTextModelWithProjection(text_config), unet=unet,
                            **shared)


def _tiny_audioldm2_pipe(shared: dict[str, Any], text_config: Any, work: Path,
                         corpus: list[str]) -> Any:
    """The AudioLDM 2 pipeline of `write_tiny_audioldm` (CLAP, T5, GPT-2, projection
    model, UNet and a CLAP feature extractor)."""
    import warnings

    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
    )
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5EncoderModel,
    )

    tokenizer = shared["tokenizer"]
    tokenizer_2 = _tiny_t5_tokenizer(work, corpus)
    audio_config = ClapAudioConfig(
        spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=16, depths=[1, 1],
        num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=32, projection_dim=8,
        patch_size=2, patch_stride=2, patch_embeds_hidden_size=8,
        patch_embed_input_channels=4)
    clap = ClapModel(ClapConfig(text_config=text_config.to_dict(),
                                audio_config=audio_config.to_dict(), projection_dim=8))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=16, d_ff=16, d_kv=4,
                                 num_heads=2, num_layers=1))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=8, n_head=2, n_layer=1, n_ctx=99,
                                      n_positions=99, vocab_size=len(tokenizer),
                                      bos_token_id=0, eos_token_id=2))
    gpt2.config.max_new_tokens = 4
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 8, 16], [None, 8, 16]), norm_num_groups=4,
        attention_head_dim=2)
    with warnings.catch_warnings():  # 16 mel bands of a 1024-point FFT: some are empty
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero")
        extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000,
                                         hop_length=160, max_length_s=1)
    return AudioLDM2Pipeline(
        text_encoder=clap, text_encoder_2=t5,
        projection_model=AudioLDM2ProjectionModel(text_encoder_dim=8, text_encoder_1_dim=16,
                                                  langauge_model_dim=8),
        language_model=gpt2, tokenizer_2=tokenizer_2, feature_extractor=extractor,
        unet=unet, **shared)
