"""Micro-batches and acknowledgements in runs: what the broker is told, and when."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from consumers.acks import Acks
from consumers.batches import Batcher


@dataclass
class Channel:
    """A channel as the broker keeps it: unacknowledged tags; a wrong ack is an error."""

    unacked: set[int] = field(default_factory=set)
    frames: list[tuple[int, bool]] = field(default_factory=list)

    def ack(self, tag: int, multiple: bool) -> None:
        if tag not in self.unacked:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        self.frames.append((tag, multiple))
        self.unacked -= {t for t in self.unacked if t <= tag} if multiple else {tag}

    __hash__ = object.__hash__


@dataclass
class Delivery:
    delivery_tag: int
    channel: Channel

    async def ack(self, multiple: bool = False) -> None:
        self.channel.ack(self.delivery_tag, multiple)


def _delivered(channel: Channel, tags: range, acks: Acks) -> list[Delivery]:
    deliveries = [Delivery(tag, channel) for tag in tags]
    for d in deliveries:
        channel.unacked.add(d.delivery_tag)
        acks.received(d)
    return deliveries


async def test_a_run_from_the_oldest_open_delivery_is_acknowledged_in_one_frame() -> None:
    channel, acks = Channel(), Acks()
    deliveries = _delivered(channel, range(1, 9), acks)
    await acks.ack(deliveries[:4])
    assert channel.frames == [(4, True)]
    assert channel.unacked == {5, 6, 7, 8}


async def test_a_later_batch_never_acknowledges_an_earlier_one_still_in_hand() -> None:
    # Given tags 1-4 still being worked on and 5-8 done
    channel, acks = Channel(), Acks()
    deliveries = _delivered(channel, range(1, 9), acks)
    # When 5-8 are acknowledged
    await acks.ack(deliveries[4:])
    # Then each alone: a multiple ack would take 1-4 with it
    assert channel.frames == [(5, False), (6, False), (7, False), (8, False)]
    assert channel.unacked == {1, 2, 3, 4}
    # And once 1-4 are done, one frame settles them (5-8 are gone already)
    await acks.ack(deliveries[:4])
    assert channel.frames[-1] == (4, True) and not channel.unacked


async def test_a_delivery_handed_back_does_not_block_the_run_after_it() -> None:
    channel, acks = Channel(), Acks()
    deliveries = _delivered(channel, range(1, 5), acks)
    channel.unacked.discard(1)  # nacked: the broker forgets it
    acks.settled(deliveries[0])
    await acks.ack(deliveries[1:])
    assert channel.frames == [(4, True)] and not channel.unacked


async def test_a_channel_shared_with_another_consumer_is_acknowledged_one_by_one() -> None:
    # Given tag 2 went to another consumer on the same channel
    channel, acks = Channel(), Acks()
    ours = [Delivery(1, channel), Delivery(3, channel), Delivery(4, channel)]
    channel.unacked |= {1, 2, 3, 4}
    for d in ours:
        acks.received(d)
    # When ours are acknowledged
    await acks.ack(ours)
    # Then the other consumer's delivery is still unacknowledged
    assert channel.frames == [(1, False), (3, False), (4, False)]
    assert channel.unacked == {2}


async def test_two_channels_are_acknowledged_each_on_its_own() -> None:
    shards, sign, acks = Channel(), Channel(), Acks()
    a = _delivered(shards, range(1, 4), acks)
    b = _delivered(sign, range(1, 3), acks)
    await acks.ack([a[0], b[0], a[1], b[1], a[2]])
    assert shards.frames == [(3, True)] and sign.frames == [(2, True)]


async def test_deliveries_without_a_tag_are_acknowledged_alone() -> None:
    @dataclass
    class Untagged:
        acked: int = 0

        async def ack(self) -> None:
            self.acked += 1

    items = [Untagged(), Untagged()]
    acks = Acks()
    for item in items:
        acks.received(item)
    await acks.ack(items)
    assert [i.acked for i in items] == [1, 1]


async def test_a_full_batch_leaves_at_once_and_a_short_one_after_the_linger() -> None:
    batches: list[list[int]] = []

    async def work(items: list[int]) -> None:
        batches.append(items)

    batcher: Batcher[int] = Batcher(3, 0.05, work)
    await asyncio.gather(*(batcher.submit(n) for n in range(3)))
    assert batches == [[0, 1, 2]]
    await asyncio.gather(*(batcher.submit(n) for n in range(3, 5)))
    assert batches == [[0, 1, 2], [3, 4]]


@dataclass
class FirstHolds:
    """Batches' work that records each batch and holds the first one until released."""

    batches: list[list[int]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    began: asyncio.Event = field(default_factory=asyncio.Event)

    async def work(self, items: list[int]) -> None:
        self.batches.append(items)
        self.began.set()
        if items[0] == 0:
            await self.release.wait()

    async def first_running(self, batcher: Batcher[int]) -> asyncio.Future[None]:
        """Item 0 submitted alone, lingered out (nothing was running) and now running."""
        first = asyncio.ensure_future(batcher.submit(0))
        await self.began.wait()
        assert self.batches == [[0]]
        return first


async def test_a_short_batch_fills_on_while_the_pipeline_is_busy() -> None:
    # Given a batch running that holds until released, and room for one running batch
    holds = FirstHolds()
    batches, batcher = holds.batches, Batcher(4, 0.01, holds.work, busy=1)
    first = await holds.first_running(batcher)

    # When requests arrive one by one, each long after the linger, while it runs
    later = []
    for n in range(1, 4):
        later.append(asyncio.ensure_future(batcher.submit(n)))
        await asyncio.sleep(0.05)

    # Then they wait together rather than leave one by one
    assert batches == [[0]]
    # and leave as one batch when the running one ends
    holds.release.set()
    await asyncio.gather(first, *later)
    assert batches == [[0], [1, 2, 3]]


async def test_a_held_batch_that_fills_leaves_at_once() -> None:
    holds = FirstHolds()
    batches, batcher = holds.batches, Batcher(2, 0.01, holds.work, busy=1)
    first = await holds.first_running(batcher)
    held = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    assert batches == [[0]]  # held: one batch is running
    filled = asyncio.ensure_future(batcher.submit(2))
    await asyncio.gather(held, filled)  # full: it leaves though one still runs
    assert batches == [[0], [1, 2]]
    holds.release.set()
    await first


async def test_a_failing_batch_fails_each_of_its_waiters_and_no_other() -> None:
    async def work(items: list[int]) -> None:
        if 1 in items:
            raise RuntimeError("bug")

    batcher: Batcher[int] = Batcher(2, 0.01, work)
    first = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in first)
    await asyncio.gather(batcher.submit(2), batcher.submit(3))  # the next batch is fine
    assert not batcher.running


async def test_a_cancelled_batch_cancels_its_waiters() -> None:
    started = asyncio.Event()

    async def work(items: list[int]) -> None:
        started.set()
        await asyncio.Event().wait()

    batcher: Batcher[int] = Batcher(1, 0.01, work)
    waiter = asyncio.create_task(batcher.submit(0))
    await started.wait()
    for task in list(batcher.running):
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_delivery_whose_channel_closed_is_acknowledged_alone_and_fails_there() -> None:
    class Closed(RuntimeError):
        pass

    @dataclass
    class OnClosedChannel:
        delivery_tag: int = 1

        @property
        def channel(self) -> Channel:
            raise Closed("channel closed")  # as aio-pika does once its channel closed

        async def ack(self, multiple: bool = False) -> None:
            raise Closed("channel closed")

    acks = Acks()
    delivery = OnClosedChannel()
    acks.received(delivery)
    acks.settled(delivery)
    with pytest.raises(Closed):
        await acks.ack([delivery])
