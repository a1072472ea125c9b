"""The operator commands: the argument parser and each command's text or --json output."""
