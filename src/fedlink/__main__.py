from fedlink.cli.main import run

run()
