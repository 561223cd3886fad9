"""pkvm-sim: a discrete-event simulator of the pKVM trust boundary around the vGIC ITS."""
