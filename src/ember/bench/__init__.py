"""`ember bench`: engine workloads against peers, printed as one table."""
