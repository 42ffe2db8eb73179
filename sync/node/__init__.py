"""The edge node daemon: enroll once, then poll, verify, decrypt-check, install and report."""
