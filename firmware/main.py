# soundmon firmware entry point: the code lives in /lib/firmware (see firmware/app.py).
from firmware import app

app.main()
