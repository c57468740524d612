"""Talking to devices: the framed serial protocol (`protocol`), emulator processes and serial
lines (`session`), our QEMU plugins (`plugins`), reading linked programs (`elf`)."""
