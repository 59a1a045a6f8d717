"""The stream contracts against a real redis-server: schemas, bounded frame streams, consumer groups, idempotency."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from personsearch.streams import (
    DetectionMessage,
    Entry,
    FrameMessage,
    FramePublisher,
    Groups,
    Keys,
    SchemaError,
    StreamConsumer,
    check_camera_id,
    decode,
    publish_and_ack,
)


def frame(seq: int, camera: str = "cam1") -> FrameMessage:
    return FrameMessage(camera=camera, seq=seq, capture_ts=1000.0 + seq, width=4, height=2, jpeg=bytes([seq % 256]) * 9)


def detections(seq: int, n: int = 3) -> DetectionMessage:
    rng = np.random.default_rng(seq)
    return DetectionMessage(
        camera="cam1",
        seq=seq,
        capture_ts=1.5,
        detected_ts=2.5,
        width=640,
        height=480,
        model="oim-r18-demo",
        boxes=[(1.0, 2.0, 30.0, 90.0)] * n,
        scores=[0.9] * n,
        embeddings=rng.standard_normal((n, 256)).astype(np.float32),
        crops=[b"\xff\xd8crop%d" % i for i in range(n)],
    )


def test_messages_round_trip_through_a_real_stream_with_binary_blobs(r: redis.Redis, keys: Keys) -> None:
    sent = detections(7)
    r.xadd(keys.detections, sent.to_fields())  # type: ignore[arg-type]
    ((_, fields),) = r.xrange(keys.detections)
    got = decode(DetectionMessage, fields)
    assert got.boxes == sent.boxes and got.scores == sent.scores and got.crops == sent.crops
    np.testing.assert_array_equal(got.embeddings, sent.embeddings)
    assert got.key == "cam1:7"
    r.xadd(keys.frames("cam1"), frame(3).to_fields())  # type: ignore[arg-type]
    ((_, ffields),) = r.xrange(keys.frames("cam1"))
    assert decode(FrameMessage, ffields) == frame(3)


def test_decoding_rejects_other_versions_kinds_and_truncated_blobs(r: redis.Redis, keys: Keys) -> None:
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in detections(1).to_fields().items()}
    with pytest.raises(SchemaError, match="version 2"):
        decode(DetectionMessage, {**fields, b"v": b"2"})
    with pytest.raises(SchemaError, match="expected a frame"):
        decode(FrameMessage, fields)
    with pytest.raises(SchemaError, match="floats"):
        decode(DetectionMessage, {**fields, b"embeddings": fields[b"embeddings"][:-4]})
    with pytest.raises(SchemaError):
        decode(DetectionMessage, {b"v": b"1"})


def test_camera_ids_that_cannot_be_keys_are_refused() -> None:
    assert check_camera_id("gate-2.north") == "gate-2.north"
    for bad in ("", "a b", "x:y", "-lead", "*", "a" * 65):
        with pytest.raises(ValueError, match="camera id"):
            check_camera_id(bad)


def test_a_full_frame_stream_drops_the_oldest_unread_frames_and_counts_them(r: redis.Redis, keys: Keys) -> None:
    pub = FramePublisher(r, keys, "cam1", maxlen=5)
    consumer = StreamConsumer(r, Groups.DETECTOR, [keys.frames("cam1")], "d1")
    consumer.ensure_groups()
    for seq in range(3):
        assert pub.publish(frame(seq)) == 0
    # The detector reads (and acks) the first three; they are no loss when later trimmed.
    read = consumer.read(count=3, block_ms=10)
    consumer.ack(keys.frames("cam1"), [e.id for e in read])
    dropped = [pub.publish(frame(seq)) for seq in range(3, 12)]
    assert r.xlen(keys.frames("cam1")) == 5  # bounded: memory does not grow
    # 12 frames, 5 kept, 3 read: 4 were never read by the detector and are counted as dropped.
    assert sum(dropped) == 4
    counters = r.hgetall(keys.camera_counters("cam1"))
    assert int(counters[b"dropped"]) == 4 and int(counters[b"frames"]) == 12
    remaining = [decode(FrameMessage, e.fields).seq for e in consumer.read(count=10, block_ms=10) if e.fields]
    assert remaining == [7, 8, 9, 10, 11]


def test_frame_sequence_numbers_keep_increasing_across_publishers(r: redis.Redis, keys: Keys) -> None:
    a = FramePublisher(r, keys, "cam1", maxlen=10).next_seq()
    b = FramePublisher(r, keys, "cam1", maxlen=10).next_seq()  # e.g. the decoder restarted
    assert b == a + 1


def test_entries_of_a_dead_consumer_are_reclaimed_by_a_live_one(r: redis.Redis, keys: Keys) -> None:
    stream = keys.frames("cam1")
    pub = FramePublisher(r, keys, "cam1", maxlen=100)
    for seq in range(4):
        pub.publish(frame(seq))
    dead = StreamConsumer(r, Groups.DETECTOR, [stream], "dead", claim_idle_ms=50)
    dead.ensure_groups()
    taken = dead.read(count=4, block_ms=10)
    assert len(taken) == 4  # ... and it dies without acking
    live = StreamConsumer(r, Groups.DETECTOR, [stream], "live", claim_idle_ms=50)
    assert live.read(count=10, block_ms=10) == []  # nothing new, and the dead one's entries are not idle yet
    import time

    time.sleep(0.1)
    again = live.read(count=10, block_ms=10)
    assert [e.id for e in again] == [e.id for e in taken] and all(e.reclaimed for e in again)
    live.ack(stream, [e.id for e in again])
    assert r.xpending(stream, Groups.DETECTOR)["pending"] == 0


def test_publish_and_ack_publishes_once_per_key_even_when_the_input_is_handled_twice(
    r: redis.Redis, keys: Keys
) -> None:
    stream = keys.frames("cam1")
    FramePublisher(r, keys, "cam1", maxlen=100).publish(frame(1))
    consumer = StreamConsumer(r, Groups.DETECTOR, [stream], "d1")
    consumer.ensure_groups()
    (entry,) = consumer.read(count=1, block_ms=10)
    assert isinstance(entry, Entry)
    out = detections(1)
    first = publish_and_ack(r, keys, "detect", out, keys.detections, stream, Groups.DETECTOR, [entry.id])
    # A second worker that reclaimed the same frame before the ack landed publishes nothing.
    second = publish_and_ack(r, keys, "detect", out, keys.detections, stream, Groups.DETECTOR, [entry.id])
    assert (first, second) == (True, False)
    assert r.xlen(keys.detections) == 1
    assert r.xpending(stream, Groups.DETECTOR)["pending"] == 0


def test_consume_skips_unreadable_entries_and_leaves_a_failed_one_pending(r: redis.Redis, keys: Keys) -> None:
    stream = keys.frames("cam1")
    consumer = StreamConsumer(r, Groups.DETECTOR, [stream], "c1", claim_idle_ms=60_000)
    consumer.ensure_groups()
    r.xadd(stream, frame(0).to_fields())
    r.xadd(stream, {b"v": b"999", b"garbage": b"x"})  # another version's message: cannot be decoded
    r.xadd(stream, frame(2).to_fields())
    seen: list[int] = []
    assert consumer.consume(FrameMessage, lambda m: seen.append(m.seq), block_ms=10) == 3
    assert seen == [0, 2]
    assert r.xpending(stream, Groups.DETECTOR)["pending"] == 0  # the unreadable one is acked too

    r.xadd(stream, frame(3).to_fields())

    def fail(m: FrameMessage) -> None:
        raise redis.ConnectionError("gone")

    with pytest.raises(redis.ConnectionError):
        consumer.consume(FrameMessage, fail, block_ms=10)
    assert r.xpending(stream, Groups.DETECTOR)["pending"] == 1  # handled again later, not lost
