"""TFDS builders: same examples, features and Grain batches as the ArrayRecord path of extract.py."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from configs.common import pipeline_defaults  # noqa: E402  (after the tfds importorskip)
from input_pipeline import extract, extract_io, pipeline  # noqa: E402
from input_pipeline.avamerg import read_avamerg  # noqa: E402
from input_pipeline.features import media_fixtures as mf  # noqa: E402
from input_pipeline.meld import read_meld  # noqa: E402
from input_pipeline.tfds import MergAvamerg, MergConfig, MergMeld, tfds_source  # noqa: E402

SPLITS = ("train", "valid", "test")
# Small extractor settings (4 video frames) used by both paths; the name picks the TFDS folder.
SMALL = MergConfig(name="small", video_kwargs={"num_frames": 4})


def _extract_config() -> extract.ExtractConfig:
    return extract.ExtractConfig(examples_per_shard=4, video_kwargs={"num_frames": 4})


def _prepare(builder_cls, manual_dir: str, data_dir: str):
    builder = builder_cls(data_dir=data_dir, config=SMALL)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def assert_same_record(got: dict, want: dict) -> None:
    """Equal keys and values; feature arrays equal within 1e-6 (text embeddings are batched
    differently by the two paths) with the same dtype and shape."""
    assert set(got) == set(want), set(got) ^ set(want)
    for key, value in want.items():
        if key in ("features", "feature_mask"):
            assert set(got[key]) == set(value), key
            for name, arr in value.items():
                g = got[key][name]
                assert g.dtype == arr.dtype and g.shape == arr.shape, (key, name, g.dtype, g.shape)
                if arr.dtype == bool:
                    np.testing.assert_array_equal(g, arr)
                else:
                    np.testing.assert_allclose(g, arr, rtol=0, atol=1e-6, err_msg=f"{key}/{name}")
        else:
            assert got[key] == value and type(got[key]) is type(value), (key, got[key], value)


# ----------------------------------------------------------------------------- AvaMERG
@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    """6 synthetic dialogues (test split without chain of empathy), built both ways."""
    from input_pipeline.synthetic.corpus import generate_corpus
    corpus = str(tmp_path_factory.mktemp("ava_corpus"))
    generate_corpus(corpus, 6, seed=1, workers=1, test_chain_of_empathy=False)
    shards = str(tmp_path_factory.mktemp("ava_shards"))
    extract.run_extraction("avamerg", corpus, shards, workers=1, config=_extract_config())
    data_dir = str(tmp_path_factory.mktemp("ava_tfds"))
    builder = _prepare(MergAvamerg, corpus, data_dir)
    return {"corpus": corpus, "shards": shards, "data_dir": data_dir, "builder": builder}


def test_avamerg_split_sizes_match_reader(ava):
    reader = read_avamerg(ava["corpus"])
    info = ava["builder"].info
    assert set(info.splits.keys()) == set(SPLITS)
    for split in SPLITS:
        n = sum(ex.split == split for ex in reader.examples)
        assert n > 0 and info.splits[split].num_examples == n == reader.counts[split]["examples"]
        assert len(tfds_source("merg_avamerg/small", ava["data_dir"], split)) == n
    files = os.listdir(os.path.join(ava["data_dir"], "merg_avamerg", "small", "1.0.0"))
    assert any(f.startswith("merg_avamerg-train.array_record-") for f in files), files
    meta = info.metadata
    assert meta["reader"]["counts"]["train"]["examples"] == info.splits["train"].num_examples
    assert meta["extractors"]["video"]["settings"]["num_frames"] == 4
    manifest_dims = pipeline.feature_dims(ava["shards"])
    assert dict(meta["feature_dims"]) == manifest_dims


def test_avamerg_random_access_equals_extract_records(ava):
    rng = np.random.default_rng(0)
    seen_no_coe = seen_coe = 0
    for split in SPLITS:
        want = extract_io.read_records(ava["shards"], split)
        src = tfds_source("merg_avamerg/small", ava["data_dir"], split)
        assert len(src) == len(want)
        for i in rng.permutation(len(want)):  # random order: true random access
            got = src[int(i)]
            assert_same_record(got, want[i])
            seen_coe += bool(got["chain_of_empathy"])
            seen_no_coe += not got["chain_of_empathy"] and got["label"] == -1
        batch = src.__getitems__([len(want) - 1, 0])
        assert [r["example_id"] for r in batch] == [want[-1]["example_id"], want[0]["example_id"]]
    assert seen_coe and seen_no_coe  # both optional-dict cases went through the round trip


def test_chunked_and_worker_generation_gives_the_same_records(ava, tmp_path):
    """Conversation chunks of ~3 examples and 2 worker processes: same records, same order."""
    builder = MergAvamerg(data_dir=str(tmp_path), config=SMALL, workers=2)
    builder.examples_per_chunk = 3
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=ava["corpus"]))
    want = extract_io.read_records(ava["shards"], "train")
    src = tfds_source("merg_avamerg/small", str(tmp_path), "train")
    assert len(src) == len(want)
    for i, rec in enumerate(want):
        assert_same_record(src[i], rec)


def test_conversation_chunks_keep_order_and_whole_conversations():
    from types import SimpleNamespace

    from input_pipeline.tfds.builder import _conversation_chunks
    exs = [SimpleNamespace(conversation_id=c, i=i) for i, c in enumerate("aaabbcddddde")]
    chunks = list(_conversation_chunks(exs, 3))
    assert [[e.conversation_id for e in ch] for ch in chunks] == [
        list("aaa"), list("bbc"), list("ddddd"), list("e")]
    assert [e.i for ch in chunks for e in ch] == list(range(len(exs)))


def test_source_pickles_for_grain_workers(ava):
    src = tfds_source("merg_avamerg/small", ava["data_dir"], "train")
    again = pickle.loads(pickle.dumps(src))
    assert len(again) == len(src)
    assert_same_record(again[3], src[3])


def test_grain_batches_from_tfds_equal_arrayrecord_batches(ava):
    c = pipeline_defaults()
    c.update(data_dir=ava["shards"], split="train", global_batch_size=4, max_utterances=6,
             seq_buckets=(256, 512, 1024, 2048), read_threads=0, prefetch_buffer_size=4,
             num_epochs=1, drop_remainder=False, shuffle=True, seed=3)
    ref = list(pipeline.make_iterator(c))
    got = list(pipeline.make_iterator(c, source=tfds_source("merg_avamerg/small", ava["data_dir"], "train")))
    assert len(ref) == len(got) == 3  # 11 examples, batches of 4
    for r, g in zip(ref, got):
        assert r.keys() == g.keys()
        for k in r:
            assert r[k].dtype == g[k].dtype and r[k].shape == g[k].shape, k
            if r[k].dtype.kind == "f":
                np.testing.assert_allclose(g[k], r[k], rtol=0, atol=1e-6, err_msg=k)
            else:
                np.testing.assert_array_equal(g[k], r[k], err_msg=k)
    assert ref[0]["example_mask"].sum() == 4 and np.any(ref[0]["audio"] != 0)


def test_manual_dir_without_split_files_says_what_to_download(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "README.txt").write_text("not the dataset")
    builder = MergAvamerg(data_dir=str(tmp_path / "data"), config=SMALL)
    with pytest.raises(FileNotFoundError, match="audio_v5_0"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


# ----------------------------------------------------------------------------- MELD
MELD_HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,"
               "StartTime,EndTime\n")


def _row(sr: int, text: str, speaker: str, emo: str, sent: str, dia: int, utt: int) -> str:
    return f'{sr},"{text}",{speaker},{emo},{sent},{dia},{utt},1,1,"00:00:01,000","00:00:02,000"\n'


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    """train: dialogue 0 (3 lines, clips for utt0/utt1, utt2 missing) + dialogue 1 (1 line, no clip);
    dev: 1 line with a clip.  3 mp4 clips with AAC audio in all."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    (root / "train_splits").mkdir(parents=True)
    (root / "dev_splits_complete").mkdir()
    (root / "train_sent_emo.csv").write_text(MELD_HEADER + "".join([
        _row(1, "Hey, how was the interview?", "Joey", "neutral", "neutral", 0, 0),
        _row(2, "I got the job!", "Rachel", "joy", "positive", 0, 1),
        _row(3, "No way, that is amazing!", "Joey", "surprise", "positive", 0, 2),
        _row(4, "Where is my sandwich?", "Ross", "anger", "negative", 1, 0)]))
    (root / "dev_sent_emo.csv").write_text(MELD_HEADER + _row(1, "I miss her.", "Chandler", "sadness",
                                                              "negative", 0, 0))
    for path, f0 in ((root / "train_splits" / "dia0_utt0.mp4", 150.0),
                     (root / "train_splits" / "dia0_utt1.mp4", 220.0),
                     (root / "dev_splits_complete" / "dia0_utt0.mp4", 180.0)):
        mf.write_av_mp4(str(path), mf.tone_bursts(f0, 1.0, 3.0, sr=44100), sr=44100, frames=12)
    shards = str(tmp_path_factory.mktemp("meld_shards"))
    extract.run_extraction("meld", str(root), shards, workers=1, config=_extract_config())
    data_dir = str(tmp_path_factory.mktemp("meld_tfds"))
    builder = _prepare(MergMeld, str(root), data_dir)
    return {"root": str(root), "shards": shards, "data_dir": data_dir, "builder": builder}


def test_meld_builder_matches_reader_and_extract(meld):
    reader = read_meld(meld["root"])
    info = meld["builder"].info
    assert set(info.splits.keys()) == {"train", "dev"}
    assert info.splits["train"].num_examples == reader.counts["train"]["examples"] == 4
    assert info.splits["dev"].num_examples == reader.counts["dev"]["examples"] == 1
    for split in ("train", "dev"):
        want = extract_io.read_records(meld["shards"], split)
        src = tfds_source("merg_meld/small", meld["data_dir"], split)
        assert len(src) == len(want)
        for i in range(len(want)):
            assert_same_record(src[i], want[i])
    last = tfds_source("merg_meld/small", meld["data_dir"], "train")[2]
    assert last["example_id"] == "meld/train/0/2" and last["sentiment"] == "positive"
    assert last["label"] == 6 and last["chain_of_empathy"] == {} and last["speaker_profile"] == {}
    assert last["feature_mask"]["audio"].tolist() == [True, True, False]  # utt2 has no clip
    assert last["feature_mask"]["text"].tolist() == [True, True, True]
    assert np.any(last["features"]["audio"][1] != 0) and not np.any(last["features"]["audio"][2])
    rej = info.metadata["splits"]["train"]["extraction_rejections"]
    assert {(r["modality"], r["utterance"], r["reason"]) for r in rej} == {
        ("audio", "train/0/utt2", "missing file"), ("video", "train/0/utt2", "missing file"),
        ("audio", "train/1/utt0", "missing file"), ("video", "train/1/utt0", "missing file")}
