"""The console of a CLI run: library INFO to the log file, warnings to stderr, plain progress lines off a TTY."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap

from merg_jax.core import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An absl app that logs the way Orbax, absl, JAX's backend probe and our code do.
APP = textwrap.dedent("""
    import logging, os
    from absl import app, flags, logging as absl_logging
    from merg_jax.core import console
    flags.DEFINE_string("out", None, "")

    def main(argv):
        console.setup(os.path.join(flags.FLAGS.out, "logs"), flags.FLAGS.verbosity, "app")
        absl_logging.info("CheckpointManager Save Finalize is syncing with other hosts")
        logging.getLogger("orbax.checkpoint").info("Renaming ckpt.orbax-checkpoint-tmp")
        logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu': no libtpu")
        logging.getLogger("merg_jax.train.trainer").info("stage sft: 8 steps")
        logging.getLogger("merg_jax.train.trainer").warning("the train step compiled 3 times")
        absl_logging.error("absl error line")
        with console.Progress("sft", 4, every=2) as bar:
            for i in range(1, 5):
                bar.update(i, {"loss": 2.0 / i})

    app.run(main)
""")
INFO = ("Save Finalize", "Renaming ckpt", "Unable to initialize backend", "stage sft: 8 steps")


def _run_app(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, str(script), f"--out={tmp_path}", *flags], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    return p, (tmp_path / "logs" / "app.log").read_text()


def test_library_info_goes_to_the_log_file_warnings_to_stderr(tmp_path):
    p, log = _run_app(tmp_path)
    for text in INFO:
        assert text in log and text not in p.stderr, text
    for text in ("the train step compiled 3 times", "absl error line"):
        assert p.stderr.count(text) == 1 and text in log, text  # once: absl's own handler is gone
    assert "[sft] step 2/4" in log and "[sft] step 4/4" in log
    assert p.stdout == ""


def test_verbosity_1_shows_info_once_but_not_the_tpu_probe(tmp_path):
    p, log = _run_app(tmp_path, "--verbosity=1")
    for text in ("Save Finalize", "Renaming ckpt", "stage sft: 8 steps", "the train step compiled"):
        assert p.stderr.count(text) == 1, text
    assert "Unable to initialize backend" not in p.stderr and "Unable to initialize backend" in log
    assert p.stderr.count("[sft] step 4/4") == 1  # the plain line itself, not its log record again


def test_plain_lines_off_a_tty_every_n_steps():
    out = io.StringIO()  # not a TTY, like a CI log or a pipe
    bar = console.Progress("pdr", 10, every=3, stream=out)
    for step in range(1, 11):
        bar.update(step, {"loss": 1.0 / step, "tokens_per_s": 1234.0})
    bar.close()
    lines = out.getvalue().splitlines()
    assert [re.search(r"step (\d+)/10", x).group(1) for x in lines] == ["3", "6", "9", "10"]
    for line in lines:
        assert line.startswith("[pdr] step ") and "loss=" in line and "tokens_per_s=1234" in line
        assert re.search(r"elapsed \d+s ETA \d+s$", line)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_resumed_progress_counts_from_start_and_every_0_prints_only_forced():
    out = io.StringIO()
    bar = console.Progress("sft", 8, start=5, every=0, stream=out)
    for step in (6, 7):
        bar.update(step)
    bar.update(8, {"loss": 0.5}, force=True)
    assert out.getvalue().splitlines() == [bar.line(8, {"loss": 0.5})]
    assert out.getvalue().startswith("[sft] step 8/8 (100.0%) loss=0.5 ")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_tty_gets_one_bar_and_the_file_still_gets_lines(caplog):
    out = _Tty()
    with caplog.at_level(logging.INFO, logger=console.PROGRESS_LOGGER):
        with console.Progress("generate test", 16, every=8, unit="example", stream=out) as bar:
            for n in (8, 16):
                bar.update(n)
    assert "\r" in out.getvalue() and "16/16" in out.getvalue()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "[generate test] example 8/16", "[generate test] example 16/16"]
