"""The operator commands: the command line (app, on click), running a command (main), each command's text
or JSON output (commands, maintain, ops; output), the progress bar (progress)."""
