"""The per-job process: one ExitStack owns a job's VM and files; steps run over SSH; everything the
job does leaves as a stream of JobEvents."""
