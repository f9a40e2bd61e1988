"""Kafka event sink for Jumping (plugin name ``kafka``)."""
