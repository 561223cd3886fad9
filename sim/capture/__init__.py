"""Real guests: capture files of a Linux guest's ITS traffic and memory, and their replay.

- :mod:`sim.capture.format`: the capture file format (``pkvm-sim-capture/1``), its
  pydantic models, :func:`~sim.capture.format.load_capture` and
  :func:`~sim.capture.format.write_capture`.
- :mod:`sim.capture.convert`: the bundled captures, converted from the raw recordings in
  ``sim/data/real-guests/``.
"""
