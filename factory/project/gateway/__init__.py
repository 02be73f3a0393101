"""The device gateway process: the mutual-TLS server (server.py, http1.py), what each of its
worker processes runs (worker.py), and the handler that answers a device (handler.py).

It sits in the project package because it serves what several apps own: a device's certificate
and check-ins (devices), and the TUF view the device is in (TUF repository, waves)."""
