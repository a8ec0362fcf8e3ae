"""
Real-VM end-to-end tests: a Linux guest under QEMU with the real guest agent
on a virtio-serial port. They run under vmtest/run (see vmtest/README.md) and
skip otherwise.
"""
