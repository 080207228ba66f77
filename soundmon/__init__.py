"""soundmon: ESP32 microphones -> MQTT -> Celery DSP -> alerts and a live dashboard."""

__version__ = "0.1.0"
