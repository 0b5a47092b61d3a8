"""The shard format: what the sink writes, the one reader gives back, byte for byte."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.fs as pafs

from deblurdiff.imageio import decode_rgb
from deblurdiff.pipelines.shard_format import BLUR, KERNEL, META, SHARP, encode_sample, iter_samples, sample_keys
from deblurdiff.pipelines.sink import OutputDir


def _members(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    sharp = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    blurry = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    kernel = rng.random((1, 5, 5), dtype=np.float32)
    return encode_sample(sharp, blurry, kernel, {"seed": seed, "crop": [0, 0, 8, 10]})


def test_written_shard_reads_back_sample_by_sample(tmp_path):
    out = OutputDir(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    out.prepare()
    samples = {"000000_0": _members(0), "000001_0": _members(1)}
    writer = out.shard_writer("shard-000000.tar")
    for key, members in samples.items():
        writer.add(key, members)
    writer.commit()

    with open(tmp_path / "shard-000000.tar", "rb") as f:
        read = list(iter_samples(f))
    assert [s.key for s in read] == list(samples)
    for sample in read:
        assert sample.members == samples[sample.key]  # every member, byte for byte
        assert decode_rgb(sample.members[SHARP]).shape == decode_rgb(sample.members[BLUR]).shape == (8, 10, 3)
        assert np.load(io.BytesIO(sample.members[KERNEL])).dtype == np.float32
        assert json.loads(sample.members[META])["seed"] == int(sample.key[:6])
    assert out.shard_keys("shard-000000.tar") == list(samples)
    with open(tmp_path / "shard-000000.tar", "rb") as f:
        assert sample_keys(f) == list(samples)


def test_a_shard_is_the_plain_tar_of_its_members_whatever_the_writer_buffers(tmp_path):
    # members larger than the writer's buffer: the bytes must still be those of a plain PAX tar of the same
    # members (fixed order, zeroed owner and time), as tarfile writes it with its defaults
    rng = np.random.default_rng(0)
    samples = {f"{i:06d}_0": {"blur.png": rng.bytes(150_000 + i), "kernel.npy": rng.bytes(333), "meta.json": b"{}",
                              "sharp.png": rng.bytes(90_001)} for i in range(3)}
    out = OutputDir(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path))
    out.prepare()
    writer = out.shard_writer("shard-000000.tar")
    for key, members in samples.items():
        writer.add(key, members)
    writer.commit()

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples.items():
            for suffix, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "shard-000000.tar").read_bytes() == expected.getvalue()
    assert writer.bytes == len(expected.getvalue())


def test_equal_samples_encode_to_equal_bytes():
    assert _members(3) == _members(3)


def test_a_shard_record_crosses_from_actor_to_driver_as_json_unchanged():
    from deblurdiff.pipelines.sources import Skipped
    from deblurdiff.pipelines.synth import ShardRecord

    record = ShardRecord("shard-000003.tar", 7, [Skipped("s3://bucket/caf\\xe9.png", "cannot decode: truncated")],
                         node="abc123", wall_s={"read_decode": 0.5}, cpu_s={"read_decode": 0.25},
                         started_at=10.0, finished_at=12.5)
    back = ShardRecord.from_json(record.to_json())
    assert back == record and isinstance(back.skipped[0], Skipped)
    kept = ShardRecord.from_json(ShardRecord("shard-000000.tar", 0).to_json())  # a kept shard: no timings
    assert kept.skipped == [] and kept.wall_s is None and kept.node is None
