"""Care teams and the nurse work they do on the alerts (SimPy)."""
