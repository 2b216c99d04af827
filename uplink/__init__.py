"""Teiten uplink: signed envelopes, MQTT publisher and the central receiver."""
