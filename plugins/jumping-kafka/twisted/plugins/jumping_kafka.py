"""Drop-in: the ``kafka`` event sink."""

from jumping.interfaces import IEventSink
from jumping.plugin import PluginSpec

kafka = PluginSpec(
    "kafka",
    IEventSink,
    "jumping_kafka.sink:KafkaSink",
    "events to an Apache Kafka topic, keyed by session_id (acks=all)",
)
