"""The forge-neutral poller core (loop, admission, checkpoint-then-ack, capacity, cancel, resume)."""
