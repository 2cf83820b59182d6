"""Device backends: one module per vendor or source, all behind collectors.device.DeviceBackend."""
