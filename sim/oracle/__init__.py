"""pkvm-sim oracle: real KVM and real pKVM, nested under QEMU, beside the model."""
