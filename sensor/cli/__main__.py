from sensor.cli import entry

entry()
