"""The meshelect firmware application: config, runtime loop, discovery, MQTT transport."""
