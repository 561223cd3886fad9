"""Real guests: capture files of a Linux guest's ITS traffic and memory, and their replay.

- :mod:`sim.capture.format`: the capture file format (``pkvm-sim-capture/1``), its
  pydantic models, :func:`~sim.capture.format.load_capture` and
  :func:`~sim.capture.format.write_capture`.
- :mod:`sim.capture.convert`: the bundled captures, converted from the raw recordings in
  ``sim/data/real-guests/``.
- :mod:`sim.capture.twin`: a replay scenario's modelled twin (``guest.kernel``).
- :mod:`sim.capture.from_model`: a capture of a modelled guest's own stream.

The replay guest itself is :mod:`sim.actors.replay`; the driver model of each kernel
generation :mod:`sim.actors.linux_driver`.
"""
