# Settings of the local dev agent (`make run`, the tests); ports and addresses come as flags.
ui = true
log_level = "WARN"
disable_update_check = true
