"""Taking over the relay: which unsent outbox rows did an earlier leader already commit to Kafka?

A relay publishes a round in one Kafka transaction and marks its rows sent in PostgreSQL after
the commit. Dying in between leaves rows that read_committed consumers have already seen but
that PostgreSQL still calls unsent; publishing them again would double them. So a new leader
(after ``init_transactions``, which settles every transaction of the previous leader: committed,
or aborted if still open) reads the committed tail of each partition, takes the ``x-outbox-id``
header of each record, and marks sent every id that is still unsent. This is how Kafka Connect's
exactly-once source connectors resume (KIP-618), with the outbox id as the source offset.

Why the tail is enough. Rounds run one after the other and a round's rows are marked (one
UPDATE, so all or none) before the next round starts, and every leader recovers before it
publishes. So the only rows that can be committed but unmarked are those of the last committed
round, and on each partition they are the last committed records: at most ``relay_batch`` of
them, since a round holds at most that many rows. The scan does not lean on that bound alone: it
reads ``chunk`` records at a time backwards and stops at the first record whose row is already
marked sent or gone (purged), which lies before the unmarked round; so a smaller ``relay_batch``
than the previous leader's is still safe. Offsets are not records: commit markers and aborted
records take offsets too, so the scan counts what read_committed returns, not offsets.

Why by id set, not "everything up to the highest id seen": PostgreSQL assigns ids at insert and
makes rows visible at commit, so a row with a lower id can become visible after a higher one was
published; it is unsent and must not be marked.
"""

from __future__ import annotations

import re

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from common.kafka import make_consumer, started
from score.outbox import OUTBOX_ID_HEADER, Outbox
from score.settings import Settings


async def committed_unsent(
    settings: Settings, tps: list[TopicPartition], outbox: Outbox, chunk: int
) -> set[int]:
    """The ids of unsent rows that are already committed on the partitions ``tps`` (of every
    topic the relay publishes to: a round's rows may span them, and on each the unmarked round
    is still the committed tail)."""
    consumer = make_consumer(settings, group_id=None, client_id=f"{settings.service_name}-relay")
    async with started(consumer):
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        # For a read_committed consumer the end is the last stable offset.
        high = await consumer.end_offsets(tps)
        found: set[int] = set()
        while scan := {tp: max(begin[tp], high[tp] - chunk) for tp in tps if high[tp] > begin[tp]}:
            records = await _read(consumer, {tp: (lo, high[tp]) for tp, lo in scan.items()})
            ids = {tp: [_outbox_id(r) for r in recs] for tp, recs in records.items()}
            unsent = await outbox.unsent_among(
                {i for tp_ids in ids.values() for i in tp_ids if i is not None}
            )
            for tp, lo in scan.items():
                found.update(i for i in ids[tp] if i in unsent)
                if all(i in unsent for i in ids[tp]):
                    high[tp] = lo  # all unsent so far: the unmarked round may reach further back
                else:
                    high[tp] = begin[tp]  # reached an earlier, marked round: done
        return found


async def _read(
    consumer: AIOKafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]]
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """The committed records in ``[lo, hi)`` of each partition."""
    out: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in ranges}
    for tp, (lo, _) in ranges.items():
        consumer.seek(tp, lo)
    consumer.resume(*ranges)
    left = set(ranges)
    while left:
        for tp, recs in (await consumer.getmany(*left, timeout_ms=500)).items():
            out[tp].extend(r for r in recs if r.offset < ranges[tp][1])
        for tp in list(left):
            # The position moves past control records and aborted ones too.
            if await consumer.position(tp) >= ranges[tp][1]:
                left.discard(tp)
                consumer.pause(tp)
    return out


# What the relay writes (str() of a bigserial id): no sign, no leading zero, at most 19 digits.
_OUTBOX_ID = re.compile(rb"[1-9][0-9]{0,18}")
_BIGINT_MAX = 2**63 - 1


def _outbox_id(record: ConsumerRecord) -> int | None:
    """The outbox id a record carries; None for one without (published before the header) and
    for any header the relay does not write: exactly one, its row's id in plain ASCII decimal.

    A record whose id is None ends the scan of its partition (as a marked row does), so an odd
    header can only make recovery stop early (a resend, which the versions deduplicate), never
    mark an unsent row sent. ``int()`` alone would also read " 42", "4_2", "+42" or "-1" (and a
    null value, or one past bigint, would fail the takeover). A well-formed id on a forged record
    is not caught here: only the score service may write the topic (Kafka ACLs,
    common.kafka_access), which is what makes the header worth believing.
    """
    values = [value for key, value in record.headers if key == OUTBOX_ID_HEADER]
    if len(values) != 1 or values[0] is None or not _OUTBOX_ID.fullmatch(values[0]):
        return None
    outbox_id = int(values[0])
    return outbox_id if outbox_id <= _BIGINT_MAX else None
