from weightconv.cli import run

run()
