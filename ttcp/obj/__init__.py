"""Pure object parsing (aya-obj's role): ELF, BTF, .BTF.ext, CO-RE, linking, map specs.

Nothing here calls the kernel: every module works on bytes and the target BTF it
is given (tests/unit/test_architecture.py keeps it so).
"""
