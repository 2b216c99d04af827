"""`teiten firstboot`: the first-boot unit's command (logic in sensor.edges.firstboot)."""

from sensor.edges.firstboot import register as register
