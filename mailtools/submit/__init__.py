"""`submit`: the sendmail command line (front.py) and the SMTP submission server (msa.py), two
front doors into the queue that share the MSA fix-ups (prepare.py)."""
