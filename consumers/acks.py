"""Acknowledging many deliveries of a channel in one frame, where that is safe.

`basic.ack(tag, multiple=True)` settles every unacknowledged delivery of the channel up
to `tag`, whoever consumed it. So it is sent only when this consumer has seen every
delivery tag of that channel from the first one on (no other consumer shares the
channel, no gap) and every one of them still open up to `tag` is in hand to be
acknowledged now; the rest are acknowledged one by one. A channel where a gap shows
(another consumer's deliveries among ours) is acknowledged one by one from then on.
A channel restored after a reconnect is a new channel, its tags count from 1 again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary


@dataclass
class _Channel:
    seen: int = 0  # every tag up to this one was delivered to us
    shared: bool = False  # a gap showed: someone else consumes on this channel too
    open: set[int] = field(default_factory=set)

    def received(self, tag: int) -> None:
        if tag == self.seen + 1 and not self.shared:
            self.seen = tag
        else:
            self.shared = True
        self.open.add(tag)

    def plan(self, tags: set[int]) -> int | None:
        """The highest tag one multiple ack may name for `tags`, None if none may."""
        if self.shared:
            return None
        upto, covered = None, 0
        for tag in sorted(self.open):
            if tag not in tags:
                break
            upto, covered = tag, covered + 1
        return upto if covered > 1 else None


class Acks:
    """Every delivery this consumer took, per channel, until it is settled."""

    def __init__(self) -> None:
        self._channels: WeakKeyDictionary[Any, _Channel] = WeakKeyDictionary()

    def received(self, delivery: object) -> None:
        tagged = _tagged(delivery)
        if tagged is not None:
            tag, channel = tagged
            try:
                state = self._channels.setdefault(channel, _Channel())
            except TypeError:  # a channel that cannot be tracked: acknowledged one by one
                return
            state.received(tag)

    def settled(self, delivery: object) -> None:
        """`delivery` ended another way (handed back): it no longer holds a tag open."""
        tagged = _tagged(delivery)
        if tagged is not None:
            state = _get(self._channels, tagged[1])
            if state is not None:
                state.open.discard(tagged[0])

    async def ack(self, deliveries: Sequence[Any]) -> None:
        """Acknowledge all of `deliveries`: one multiple ack per channel where it is safe.

        Raises what the channel raises; the caller hands back what was not acknowledged.
        """
        by_channel: dict[int, tuple[_Channel, list[tuple[int, Any]]]] = {}
        singles: list[Any] = []
        for delivery in deliveries:
            tagged = _tagged(delivery)
            state = _get(self._channels, tagged[1]) if tagged is not None else None
            if tagged is None or state is None:
                singles.append(delivery)
            else:
                by_channel.setdefault(id(state), (state, []))[1].append((tagged[0], delivery))
        for state, pairs in by_channel.values():
            tags = {tag for tag, _ in pairs}
            upto = state.plan(tags)
            if upto is not None:
                last = next(d for tag, d in pairs if tag == upto)
                await last.ack(multiple=True)
                state.open.difference_update(t for t in tags if t <= upto)
            for tag, delivery in pairs:
                if upto is None or tag > upto:
                    await delivery.ack()
                    state.open.discard(tag)
        for delivery in singles:
            await delivery.ack()


def _tagged(delivery: object) -> tuple[int, Any] | None:
    tag = getattr(delivery, "delivery_tag", None)
    try:
        channel = getattr(delivery, "channel", None)
    except RuntimeError:  # aio-pika's ChannelInvalidStateError: the channel is closed
        return None
    if not isinstance(tag, int) or channel is None:
        return None
    return tag, channel


def _get(channels: WeakKeyDictionary[Any, _Channel], channel: Any) -> _Channel | None:
    try:
        return channels.get(channel)
    except TypeError:
        return None
