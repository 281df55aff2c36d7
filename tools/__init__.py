"""Host-side tools beside the product: benches, the firmware tool and the simulator."""
