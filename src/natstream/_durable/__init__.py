"""Durable recording: a JetStream consumer's messages into hour files, each once.

Parts, each with its guarantees in its docstring: ``_wire`` (JetStream's subjects,
pull requests and status messages; no I/O), ``_sequencer`` (which delivery to write,
skip or hold; no I/O), ``_setup`` (the stream and the consumer, checked or created),
``_puller`` (pull requests kept outstanding, deliveries handed on), ``_recording``
(the loop: judge, write, commit, acknowledge) and ``_recorders`` (the subscriber's
``record_durable``).
"""

from ._recorders import DurableRecorders
from ._recording import DurableRecording, DurableRecordingStats
from ._setup import DurableOptions

__all__ = ["DurableOptions", "DurableRecorders", "DurableRecording", "DurableRecordingStats"]
