# soundmon firmware: runs at power-on before main.py. Keep it tiny: a crash here stops the
# board before the watchdog is armed.
import gc

gc.collect()
