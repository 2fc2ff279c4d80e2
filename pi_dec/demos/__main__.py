from pi_dec.demos.cli import run

run()
